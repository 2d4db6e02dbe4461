"""`hope bench`: HOPE against its size-matched Llama twin, measured in one run on one machine (issue 5).

One module per measurement: `training` (forward+backward tokens/s), `prefill` (forward with cache, tokens/s),
`decode` (ms per token at a given context), `peak_memory` (peak RSS of one step, in a fresh child process),
`cache_size` (bytes of decoding state per sequence), `operators` (chunked memory scans against their naive
references); `timing` interleaves the models, `machine` describes the host, `plot` draws the figure and `cli` runs
it all and writes the JSON. See bench/results/README.md for the method of each figure."""

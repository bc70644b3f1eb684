module ollamasmartproxy/benchmarks

go 1.19

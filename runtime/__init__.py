"""The compiler and executor: sharding plan, memory plan, static steps, KV cache, sampling, generate."""

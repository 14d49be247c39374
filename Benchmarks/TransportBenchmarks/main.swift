print("TransportBenchmarks")

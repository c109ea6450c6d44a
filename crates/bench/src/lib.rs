//! Open-loop load generator printing throughput and latency percentiles

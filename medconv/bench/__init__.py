"""What a user runs to measure their own setup (tiles, infer, train overhead, GPU checks); each prints ratios
against a baseline measured in the same run. Peer comparisons live in the checkout's benchmarks/ folder."""

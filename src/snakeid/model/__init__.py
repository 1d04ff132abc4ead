"""The network, its exported form and the rules that turn its outputs into a decision."""

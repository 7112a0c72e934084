"""The network: ResNet encoders, projection and supervised heads, and SimCLRModel (forward pass and variable sets)."""

"""The `ouroboros` command: every command, the top of the package graph (it alone may import
launch, bench and distill together)."""

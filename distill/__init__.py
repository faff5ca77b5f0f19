"""Draft training and evaluation: train-draft, eval-draft."""

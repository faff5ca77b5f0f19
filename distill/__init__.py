"""Draft training and evaluation: draft-data, train-draft, eval-draft."""

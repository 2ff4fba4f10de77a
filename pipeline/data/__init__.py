"""The competition's files: tables, images and their cache, labels and target types, folds, submissions, drift."""

"""One widget per file: data, model, composer, perturb, train, results."""

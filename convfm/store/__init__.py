"""Storage: model directories, the registry, local paths and URIs, serving.json."""

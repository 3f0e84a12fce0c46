"""The sweep: trial grid, data loading, Ray execution, MLflow tracking, the CLI."""

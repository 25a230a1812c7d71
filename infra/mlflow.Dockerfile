# MLflow tracking server image for infra/compose.yaml.
# The stock ghcr.io/mlflow/mlflow image ships without the Postgres driver and
# boto3, which `--backend-store-uri postgresql+psycopg2://` and the
# s3:// artifact destination need.
FROM ghcr.io/mlflow/mlflow:v3.17.0
RUN pip install --no-cache-dir psycopg2-binary boto3

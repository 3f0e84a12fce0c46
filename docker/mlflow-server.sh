#!/bin/sh
# The deployment's MLflow tracking server behind MLflow's own authentication (its basic-auth app): every request
# but GET /health needs a user's login, and a user sees only what it was granted. Writes the auth app's
# configuration from the environment into a private file, then runs `mlflow server --app-name basic-auth "$@"`.
#
#   BNSWEEP_AUTH_DATABASE_URI     where the users and their permissions are kept: a SQLAlchemy URI (the backend
#                                 store's database does; MLflow keeps them in tables of their own)
#   MLFLOW_AUTH_ADMIN_USERNAME    the admin user, made at the server's first start (MLflow's own variables; the
#   MLFLOW_AUTH_ADMIN_PASSWORD    password at least 12 characters); the sweep and the analysis log in as it
#   MLFLOW_FLASK_SERVER_SECRET_KEY  signs the UI's forms (MLflow's CSRF protection)
#   PYTHON                        the Python that runs MLflow (default: python)
set -eu
for name in BNSWEEP_AUTH_DATABASE_URI MLFLOW_AUTH_ADMIN_USERNAME MLFLOW_AUTH_ADMIN_PASSWORD \
        MLFLOW_FLASK_SERVER_SECRET_KEY; do
    eval "value=\${$name:-}"
    if [ -z "$value" ]; then
        echo "mlflow-server: error: $name is not set (see docs/deployment.md)" >&2
        exit 2
    fi
done
umask 077
config=$(mktemp "${TMPDIR:-/tmp}/mlflow-auth.XXXXXX")
cat > "$config" <<EOF
[mlflow]
# Authenticated users other than the admin get nothing they were not granted.
default_permission = NO_PERMISSIONS
database_uri = ${BNSWEEP_AUTH_DATABASE_URI}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
# A login's password hash (PBKDF2) is checked once a minute per worker, not at every request: uncached, a sweep's
# few requests per trial keep a core of the server busy. (A password changed through the API counts at once on the
# worker that took the change, on the others within the minute.)
auth_cache_ttl_seconds = 60
EOF
MLFLOW_AUTH_CONFIG_PATH=$config
export MLFLOW_AUTH_CONFIG_PATH
exec "${PYTHON:-python}" -m mlflow server --app-name basic-auth "$@"

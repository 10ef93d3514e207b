"""Team mode: a shared DVC remote on S3 and a production MLflow (PostgreSQL backend store,
S3 artifact store proxied by the server), started locally by ``make team-up`` or pointed at a
lab's own servers through an env file. See the README, "Running it for a team"."""

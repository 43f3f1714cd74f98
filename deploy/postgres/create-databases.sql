-- One database per service, each with its own migration history (docker-compose.yml).
-- The official postgres image runs this once, when it initialises an empty data
-- volume, as POSTGRES_USER, who then owns both; on an existing volume it is skipped
-- (`docker compose down -v` starts over).
CREATE DATABASE tandem_users;
CREATE DATABASE tandem_ai;

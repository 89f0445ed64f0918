-- Version 2: cuts, stretches of history the database lost (stores.history).
-- IF NOT EXISTS: version 3 runs it again, for a database a pre-release
-- took to "version 2" without it.

CREATE TABLE IF NOT EXISTS talkserver_cuts (epoch bigint PRIMARY KEY, survived bigint NOT NULL,
    cut_through bigint NOT NULL, noticed_at timestamptz NOT NULL DEFAULT now());

-- Version 1: the board, the change log, the head and the write functions.

CREATE TABLE talks (title text PRIMARY KEY, presenter text NOT NULL, summary text NOT NULL,
    -- --protect-talks: the owner is stored with the talk, shared by every process.
    owner text);

-- Comments are kept in the order they were made: by id.
CREATE TABLE comments (id bigserial PRIMARY KEY, title text NOT NULL,
    author text NOT NULL, message text NOT NULL);
CREATE INDEX comments_by_talk ON comments (title, id);

-- The newest change per title; a title with no talk is a tombstone.
CREATE TABLE change_log (title text PRIMARY KEY, stamp bigint NOT NULL UNIQUE);

-- One row: the newest stamp handed out (its lock orders all writers),
-- and the newest pruned tombstone's stamp.
CREATE TABLE head (one boolean PRIMARY KEY DEFAULT true CHECK (one),
    stamp bigint NOT NULL, pruned_through bigint NOT NULL);

-- Each write is one call of a function, in one statement: the head row is
-- locked from the stamp to the COMMIT inside the server, never across a
-- round trip to a busy application process.  ``now_ms`` is NULL except in
-- tests, which bring their own clock.
CREATE FUNCTION talkserver_stamp(t text, now_ms bigint) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    stamp bigint;
BEGIN
    UPDATE head SET stamp = greatest(
        coalesce(now_ms, floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint), head.stamp + 1)
    RETURNING head.stamp INTO stamp;
    INSERT INTO change_log (title, stamp) VALUES (t, stamp)
        ON CONFLICT (title) DO UPDATE SET stamp = excluded.stamp;
    PERFORM pg_notify('talkserver_changes', stamp::text);
    RETURN stamp;
END $$;

-- --protect-talks (``o`` not NULL): the check is repeated here, under the
-- head lock, because another process may have given the talk an owner
-- that this one has not applied yet.
CREATE FUNCTION talkserver_check_owner(t text, o text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF o IS NOT NULL AND EXISTS (SELECT 1 FROM talks WHERE title = t AND owner <> o) THEN
        RAISE EXCEPTION 'talk % has another owner', t USING ERRCODE = 'insufficient_privilege';
    END IF;
END $$;

CREATE FUNCTION talkserver_put(t text, p text, s text, o text, now_ms bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    stamp bigint := talkserver_stamp(t, now_ms);
BEGIN
    PERFORM talkserver_check_owner(t, o);
    INSERT INTO talks (title, presenter, summary, owner) VALUES (t, p, s, o) ON CONFLICT (title)
        DO UPDATE SET presenter = excluded.presenter, summary = excluded.summary,
                      owner = coalesce(excluded.owner, talks.owner);
    DELETE FROM comments WHERE title = t;
    RETURN stamp;
END $$;

-- A missing talk raises no_data_found, which rolls the stamp back.
CREATE FUNCTION talkserver_delete(t text, o text, now_ms bigint) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    stamp bigint := talkserver_stamp(t, now_ms);
BEGIN
    PERFORM talkserver_check_owner(t, o);
    DELETE FROM talks WHERE title = t;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no talk titled %', t USING ERRCODE = 'no_data_found';
    END IF;
    DELETE FROM comments WHERE title = t;
    RETURN stamp;
END $$;

CREATE FUNCTION talkserver_comment(t text, a text, m text, now_ms bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    stamp bigint := talkserver_stamp(t, now_ms);
BEGIN
    IF NOT EXISTS (SELECT 1 FROM talks WHERE title = t) THEN
        RAISE EXCEPTION 'no talk titled %', t USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO comments (title, author, message) VALUES (t, a, m);
    RETURN stamp;
END $$;

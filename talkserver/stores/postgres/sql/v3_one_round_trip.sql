-- Version 3: one round trip per write, and pruning in one statement.
-- Every answer also carries what tells a database that went back in time
-- (stores.history): the board's epoch, and the witness, the database's
-- stamp of the title the asking process changed last.  The version 1
-- functions stay, so servers of the previous versions keep working on a
-- migrated database during a rolling upgrade.

-- A database that a pre-release of this version took to "version 2" with
-- these functions and no cuts table gets the table here.
CREATE TABLE IF NOT EXISTS talkserver_cuts (epoch bigint PRIMARY KEY, survived bigint NOT NULL,
    cut_through bigint NOT NULL, noticed_at timestamptz NOT NULL DEFAULT now());

-- The head, and every change after the cursor ``since`` with its talk's
-- state, in stamp order; one query, so one snapshot.  Tombstones pruned
-- after ``since`` took deletes with them that the reader has not applied:
-- then it gets the whole log (``reload``).  Then the board's epoch, and
-- the database's stamp of the title ``witness_title`` (NULL when none).
CREATE FUNCTION talkserver_changes(since bigint, witness_title text)
RETURNS TABLE (db_head bigint, db_pruned_through bigint, reload boolean, changes text,
               epoch bigint, witness bigint) LANGUAGE sql AS $$
SELECT h.stamp, h.pruned_through, h.pruned_through > since,
  (SELECT coalesce(json_agg(json_build_array(c.title, c.stamp, t.presenter, t.summary, t.owner,
       (SELECT coalesce(json_agg(json_build_array(m.author, m.message) ORDER BY m.id), '[]')
        FROM comments m WHERE m.title = c.title)) ORDER BY c.stamp), '[]')
   FROM change_log c LEFT JOIN talks t ON t.title = c.title
   WHERE c.stamp > CASE WHEN h.pruned_through > since THEN -1 ELSE since END)::text,
  (SELECT coalesce(max(epoch), 0) FROM talkserver_cuts) AS epoch,
  (SELECT stamp FROM change_log WHERE title = witness_title) AS witness
FROM head h
$$;

-- Each write, and then the catch-up from the writer's head through its
-- own stamp.  The catch-up's snapshot is taken after the head lock was
-- granted, so every smaller stamp has committed and is in it.  The
-- witness is read before the write, which may change that title.
CREATE FUNCTION talkserver_put(t text, p text, s text, o text, now_ms bigint, since bigint,
                               witness_title text)
RETURNS TABLE (written bigint, db_head bigint, db_pruned_through bigint, reload boolean, changes text,
               epoch bigint, witness bigint)
LANGUAGE plpgsql AS $$
DECLARE
    seen bigint := (SELECT l.stamp FROM change_log l WHERE l.title = witness_title);
BEGIN
    written := talkserver_put(t, p, s, o, now_ms);
    RETURN QUERY SELECT written, c.db_head, c.db_pruned_through, c.reload, c.changes, c.epoch, seen
        FROM talkserver_changes(since, NULL) c;
END $$;

CREATE FUNCTION talkserver_delete(t text, o text, now_ms bigint, since bigint, witness_title text)
RETURNS TABLE (written bigint, db_head bigint, db_pruned_through bigint, reload boolean, changes text,
               epoch bigint, witness bigint)
LANGUAGE plpgsql AS $$
DECLARE
    seen bigint := (SELECT l.stamp FROM change_log l WHERE l.title = witness_title);
BEGIN
    written := talkserver_delete(t, o, now_ms);
    RETURN QUERY SELECT written, c.db_head, c.db_pruned_through, c.reload, c.changes, c.epoch, seen
        FROM talkserver_changes(since, NULL) c;
END $$;

CREATE FUNCTION talkserver_comment(t text, a text, m text, now_ms bigint, since bigint,
                                   witness_title text)
RETURNS TABLE (written bigint, db_head bigint, db_pruned_through bigint, reload boolean, changes text,
               epoch bigint, witness bigint)
LANGUAGE plpgsql AS $$
DECLARE
    seen bigint := (SELECT l.stamp FROM change_log l WHERE l.title = witness_title);
BEGIN
    written := talkserver_comment(t, a, m, now_ms);
    RETURN QUERY SELECT written, c.db_head, c.db_pruned_through, c.reload, c.changes, c.epoch, seen
        FROM talkserver_changes(since, NULL) c;
END $$;

-- Forget tombstones stamped before ``older_than``: one statement, so the
-- head lock (which keeps it between writes) is held for no longer than
-- the DELETE, never across a round trip.  (OR REPLACE: the pre-release
-- "version 2" had the same function.)
CREATE OR REPLACE FUNCTION talkserver_prune(older_than bigint) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    gone bigint;
    newest bigint;
BEGIN
    PERFORM 1 FROM head FOR UPDATE;
    WITH pruned AS (
        DELETE FROM change_log c WHERE c.stamp < older_than
            AND NOT EXISTS (SELECT 1 FROM talks t WHERE t.title = c.title)
        RETURNING c.stamp
    )
    SELECT count(*), max(pruned.stamp) INTO gone, newest FROM pruned;
    IF gone > 0 THEN
        UPDATE head SET pruned_through = greatest(head.pruned_through, newest);
        PERFORM pg_notify('talkserver_changes', '');
    END IF;
    RETURN gone;
END $$;

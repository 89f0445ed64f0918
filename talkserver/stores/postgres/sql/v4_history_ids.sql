-- Version 4: every value the head takes gets a random history id, the
-- witness of a cut that no later write can hide (stores.postgres.cuts).
-- A server remembers the id of the head it applied; the database answers
-- with the id it holds for that stamp.  The same id: the database's history
-- runs through this server's head, so it holds everything the server
-- applied (history is one line: the head lock orders every write, and a
-- restore or a failover keeps a prefix of it).  No id, or another one: the
-- database lost the change at that stamp, whatever was written since.

CREATE TABLE talkserver_history (stamp bigint PRIMARY KEY, id bigint NOT NULL);

-- A trigger, so that every way the head moves gets its id: writes, cuts,
-- talkserver-import, a new board, and the functions of servers of older
-- versions still running during a rolling upgrade.  A stamp written again
-- (after the database went back) is another write: it gets a new id.
CREATE FUNCTION talkserver_head_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.stamp = OLD.stamp THEN
        RETURN NULL;
    END IF;
    INSERT INTO talkserver_history (stamp, id) VALUES (NEW.stamp, floor(random() * 9007199254740991)::bigint)
        ON CONFLICT (stamp) DO UPDATE SET id = excluded.id;
    RETURN NULL;
END $$;

CREATE TRIGGER talkserver_head_moved AFTER INSERT OR UPDATE OF stamp ON head
    FOR EACH ROW EXECUTE FUNCTION talkserver_head_moved();

INSERT INTO talkserver_history (stamp, id) SELECT stamp, floor(random() * 9007199254740991)::bigint FROM head;

-- The catch-up: the head, every change after ``since`` with its talk's
-- state (the whole log when tombstones after ``since`` were pruned), the
-- board's epoch, the id of the head, the id the database holds for
-- ``since``, the oldest stamp whose id is still kept, and the stamp of
-- the title ``witness_title`` (the asker's newest change: a log emptied by
-- hand under a head left in place shows there).  One statement, STABLE,
-- so one snapshot even when called inside a write function.
CREATE FUNCTION talkserver_catch_up(since bigint, witness_title text)
RETURNS TABLE (db_head bigint, db_pruned_through bigint, reload boolean, changes text, epoch bigint,
               head_id bigint, since_id bigint, history_from bigint, witness bigint)
LANGUAGE sql STABLE AS $$
SELECT h.stamp, h.pruned_through, h.pruned_through > since,
  (SELECT coalesce(json_agg(json_build_array(c.title, c.stamp, t.presenter, t.summary, t.owner,
       (SELECT coalesce(json_agg(json_build_array(m.author, m.message) ORDER BY m.id), '[]')
        FROM comments m WHERE m.title = c.title)) ORDER BY c.stamp), '[]')
   FROM change_log c LEFT JOIN talks t ON t.title = c.title
   WHERE c.stamp > CASE WHEN h.pruned_through > since THEN -1 ELSE since END)::text,
  (SELECT coalesce(max(k.epoch), 0) FROM talkserver_cuts k),
  (SELECT w.id FROM talkserver_history w WHERE w.stamp = h.stamp),
  (SELECT w.id FROM talkserver_history w WHERE w.stamp = since),
  (SELECT min(w.stamp) FROM talkserver_history w),
  (SELECT l.stamp FROM change_log l WHERE l.title = witness_title)
FROM head h
$$;

-- Each write (the version 1 function, under the head lock), then the
-- catch-up from the writer's head through its own stamp: one round trip.
-- The witness title's stamp is read before the write, which may change it.
CREATE FUNCTION talkserver_write_put(t text, p text, s text, o text, now_ms bigint, since bigint, witness_title text)
RETURNS TABLE (written bigint, db_head bigint, db_pruned_through bigint, reload boolean, changes text,
               epoch bigint, head_id bigint, since_id bigint, history_from bigint, witness bigint)
LANGUAGE plpgsql AS $$
DECLARE
    seen bigint := (SELECT l.stamp FROM change_log l WHERE l.title = witness_title);
BEGIN
    written := talkserver_put(t, p, s, o, now_ms);
    RETURN QUERY SELECT written, c.db_head, c.db_pruned_through, c.reload, c.changes, c.epoch, c.head_id,
        c.since_id, c.history_from, seen FROM talkserver_catch_up(since, NULL) c;
END $$;

CREATE FUNCTION talkserver_write_delete(t text, o text, now_ms bigint, since bigint, witness_title text)
RETURNS TABLE (written bigint, db_head bigint, db_pruned_through bigint, reload boolean, changes text,
               epoch bigint, head_id bigint, since_id bigint, history_from bigint, witness bigint)
LANGUAGE plpgsql AS $$
DECLARE
    seen bigint := (SELECT l.stamp FROM change_log l WHERE l.title = witness_title);
BEGIN
    written := talkserver_delete(t, o, now_ms);
    RETURN QUERY SELECT written, c.db_head, c.db_pruned_through, c.reload, c.changes, c.epoch, c.head_id,
        c.since_id, c.history_from, seen FROM talkserver_catch_up(since, NULL) c;
END $$;

CREATE FUNCTION talkserver_write_comment(t text, a text, m text, now_ms bigint, since bigint, witness_title text)
RETURNS TABLE (written bigint, db_head bigint, db_pruned_through bigint, reload boolean, changes text,
               epoch bigint, head_id bigint, since_id bigint, history_from bigint, witness bigint)
LANGUAGE plpgsql AS $$
DECLARE
    seen bigint := (SELECT l.stamp FROM change_log l WHERE l.title = witness_title);
BEGIN
    written := talkserver_comment(t, a, m, now_ms);
    RETURN QUERY SELECT written, c.db_head, c.db_pruned_through, c.reload, c.changes, c.epoch, c.head_id,
        c.since_id, c.history_from, seen FROM talkserver_catch_up(since, NULL) c;
END $$;

-- Pruning also forgets the ids of stamps older than the retention window
-- (but the head's): a server that far behind reloads anyway.
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
    DELETE FROM talkserver_history w WHERE w.stamp < older_than AND w.stamp < (SELECT h.stamp FROM head h);
    IF gone > 0 THEN
        UPDATE head SET pruned_through = greatest(head.pruned_through, newest);
        PERFORM pg_notify('talkserver_changes', '');
    END IF;
    RETURN gone;
END $$;

-- The owner check (--protect-talks) raises insufficient_privilege, as in
-- version 1 (so servers of version 3 still read it as "not the owner"),
-- now with a DETAIL that tells it from a privilege the database user
-- lacks (a missing GRANT), whatever language the server's messages are in.
CREATE OR REPLACE FUNCTION talkserver_check_owner(t text, o text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF o IS NOT NULL AND EXISTS (SELECT 1 FROM talks WHERE title = t AND owner <> o) THEN
        RAISE EXCEPTION 'talk % has another owner', t
            USING ERRCODE = 'insufficient_privilege', DETAIL = 'talkserver: another owner';
    END IF;
END $$;

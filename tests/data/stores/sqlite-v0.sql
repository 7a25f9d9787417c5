BEGIN TRANSACTION;
CREATE TABLE attempts (
        message_id TEXT NOT NULL, at REAL NOT NULL, relay TEXT NOT NULL, code INTEGER,
        reply TEXT NOT NULL, duration REAL NOT NULL, outcome TEXT NOT NULL);
INSERT INTO "attempts" VALUES('m1',2.0,'r',451,'x',0.1,'temporary');
INSERT INTO "attempts" VALUES('m1',3.0,'r',NULL,'x',0.1,'temporary');
INSERT INTO "attempts" VALUES('m1',4.0,'r',451,'x',0.1,'temporary');
CREATE TABLE bodies (id TEXT PRIMARY KEY, raw BLOB NOT NULL);
INSERT INTO "bodies" VALUES('m1',X'00');
CREATE TABLE depth_hourly (hour INTEGER PRIMARY KEY, depth INTEGER NOT NULL);
CREATE TABLE messages (
        id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        mail_from TEXT NOT NULL,
        rcpt_to TEXT NOT NULL,           -- JSON list, every envelope recipient
        pending_rcpt TEXT,               -- JSON list left to try after a partial delivery
        subject TEXT NOT NULL DEFAULT '',
        priority INTEGER NOT NULL DEFAULT 0,
        size INTEGER NOT NULL,
        idempotency_key TEXT,
        created_at REAL NOT NULL,
        send_after REAL NOT NULL,        -- the time asked for
        due_at REAL NOT NULL,            -- the next attempt
        attempts INTEGER NOT NULL DEFAULT 0,
        last_code INTEGER,
        last_error TEXT,
        lease_owner TEXT,
        lease_until REAL,
        updated_at REAL NOT NULL,
        finished_at REAL
    );
INSERT INTO "messages" VALUES('m1','deferred','a@x.org','["b@x.org"]',NULL,'s',0,10,NULL,1.0,1.0,100.0,2,NULL,NULL,NULL,NULL,1.0,NULL);
INSERT INTO "messages" VALUES('m2','failed','a@x.org','["b@x.org"]',NULL,'s',0,10,NULL,1.0,1.0,1.0,1,NULL,NULL,NULL,NULL,7300.0,7300.0);
CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY, at REAL NOT NULL, reason TEXT NOT NULL, data BLOB NOT NULL);
CREATE TABLE reasons_hourly (
        hour INTEGER NOT NULL, reason TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (hour, reason));
CREATE TABLE recipients (
        message_id TEXT NOT NULL, address TEXT NOT NULL, status TEXT NOT NULL,
        code INTEGER, reply TEXT NOT NULL, updated_at REAL NOT NULL,
        PRIMARY KEY (message_id, address));
CREATE TABLE stats_hourly (
        hour INTEGER NOT NULL, kind TEXT NOT NULL, bucket INTEGER NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (hour, kind, bucket));
CREATE TABLE status_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL);
INSERT INTO "status_counts" VALUES('queued',0);
INSERT INTO "status_counts" VALUES('sending',0);
INSERT INTO "status_counts" VALUES('deferred',1);
INSERT INTO "status_counts" VALUES('sent',0);
INSERT INTO "status_counts" VALUES('failed',1);
INSERT INTO "status_counts" VALUES('expired',0);
INSERT INTO "status_counts" VALUES('cancelled',0);
CREATE INDEX ix_due ON messages (priority DESC, due_at)
        WHERE status IN ('queued', 'deferred');
CREATE INDEX ix_waiting_due ON messages (due_at)
        WHERE status IN ('queued', 'deferred');
CREATE INDEX ix_lease ON messages (lease_until) WHERE status = 'sending';
CREATE INDEX ix_finished ON messages (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX ix_status_created ON messages (status, created_at);
CREATE INDEX ix_created ON messages (created_at);
CREATE INDEX ix_attempts ON attempts (message_id);
CREATE TRIGGER count_ins AFTER INSERT ON messages BEGIN
        UPDATE status_counts SET n = n + 1 WHERE status = NEW.status; END;
CREATE TRIGGER count_upd AFTER UPDATE OF status ON messages
        WHEN OLD.status <> NEW.status BEGIN
        UPDATE status_counts SET n = n - 1 WHERE status = OLD.status;
        UPDATE status_counts SET n = n + 1 WHERE status = NEW.status; END;
CREATE TRIGGER count_del AFTER DELETE ON messages BEGIN
        UPDATE status_counts SET n = n - 1 WHERE status = OLD.status; END;
COMMIT;

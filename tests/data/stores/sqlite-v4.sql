BEGIN TRANSACTION;
CREATE TABLE attempts (
        message_id TEXT NOT NULL, at REAL NOT NULL, relay TEXT NOT NULL, code INTEGER,
        reply TEXT NOT NULL, duration REAL NOT NULL, outcome TEXT NOT NULL, daemon TEXT, claim INTEGER);
INSERT INTO "attempts" VALUES('old1',1790000101.0,'relay:25',250,'250 ok',0.05,'sent','host:100:aa',1);
INSERT INTO "attempts" VALUES('old2',1790000102.0,'relay:25',451,'451 busy',0.05,'temporary','host:100:aa',1);
INSERT INTO "attempts" VALUES('old3',1790000103.0,'relay:25',550,'550 no such user',0.05,'permanent','host:100:aa',1);
INSERT INTO "attempts" VALUES('old4',1790000104.0,'relay:25',NULL,'connection refused',0.05,'temporary','host:100:aa',1);
CREATE TABLE bodies (id TEXT PRIMARY KEY, raw BLOB NOT NULL);
INSERT INTO "bodies" VALUES('old1',X'46726F6D3A206140782E6F72670D0A546F3A206240782E6F72670D0A5375626A6563743A206F6C6420310D0A0D0A626F647920310D0A');
INSERT INTO "bodies" VALUES('old2',X'46726F6D3A206140782E6F72670D0A546F3A206240782E6F72672C206340782E6F72670D0A5375626A6563743A206F6C6420320D0A0D0A626F647920320D0A');
INSERT INTO "bodies" VALUES('old3',X'46726F6D3A206140782E6F72670D0A546F3A206240782E6F72670D0A5375626A6563743A206F6C6420330D0A0D0A626F647920330D0A');
INSERT INTO "bodies" VALUES('old4',X'46726F6D3A206140782E6F72670D0A546F3A206240782E6F72670D0A5375626A6563743A206F6C6420340D0A0D0A626F647920340D0A');
INSERT INTO "bodies" VALUES('old5',X'46726F6D3A206140782E6F72670D0A546F3A206240782E6F72670D0A5375626A6563743A206F6C6420350D0A0D0A626F647920350D0A');
INSERT INTO "bodies" VALUES('old6',X'46726F6D3A206140782E6F72670D0A546F3A206240782E6F72670D0A5375626A6563743A206F6C6420360D0A0D0A626F647920360D0A');
INSERT INTO "bodies" VALUES('old7',X'46726F6D3A206140782E6F72670D0A546F3A206240782E6F72670D0A5375626A6563743A206F6C6420370D0A0D0A626F647920370D0A');
CREATE TABLE daemons (id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL,
        version TEXT NOT NULL, started_at REAL NOT NULL, heartbeat_at REAL NOT NULL, spool TEXT NOT NULL);
INSERT INTO "daemons" VALUES('host:100:aa','host',100,'0.1.0',1790000000.0,1790000060.0,'/var/spool/mailmand');
CREATE TABLE depth_hourly (hour INTEGER PRIMARY KEY, depth INTEGER NOT NULL);
INSERT INTO "depth_hourly" VALUES(497222,4);
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
    , claims INTEGER NOT NULL DEFAULT 0, fails INTEGER NOT NULL DEFAULT 0);
INSERT INTO "messages" VALUES('old1','sent','a@x.org','["b@x.org"]',NULL,'old 1',1,54,'key1',1790000001.0,1790000001.0,1790000001.0,1,250,NULL,NULL,NULL,1790000101.0,1790000101.0,1,1);
INSERT INTO "messages" VALUES('old2','deferred','a@x.org','["b@x.org", "c@x.org"]','["c@x.org"]','old 2',2,63,NULL,1790000002.0,1790000002.0,1790000400.0,1,451,'451 busy',NULL,NULL,1790000102.0,NULL,1,1);
INSERT INTO "messages" VALUES('old3','failed','a@x.org','["b@x.org"]',NULL,'old 3',0,54,NULL,1790000003.0,1790000003.0,1790000003.0,1,550,'550 no such user',NULL,NULL,1790000103.0,1790000103.0,1,1);
INSERT INTO "messages" VALUES('old4','deferred','a@x.org','["b@x.org"]',NULL,'old 4',1,54,NULL,1790000004.0,1790000004.0,1790000200.0,1,NULL,'connection refused',NULL,NULL,1790000104.0,NULL,1,0);
INSERT INTO "messages" VALUES('old5','sending','a@x.org','["b@x.org"]',NULL,'old 5',2,54,NULL,1790000005.0,1790000005.0,1790000005.0,0,NULL,NULL,'host:100:aa',1790000500.0,1790000200.0,NULL,2,0);
INSERT INTO "messages" VALUES('old6','queued','a@x.org','["b@x.org"]',NULL,'old 6',0,54,NULL,1790000006.0,1791000000.0,1791000000.0,0,NULL,NULL,NULL,NULL,1790000006.0,NULL,0,0);
INSERT INTO "messages" VALUES('old7','cancelled','a@x.org','["b@x.org"]',NULL,'old 7',1,54,NULL,1790000007.0,1790000007.0,1790000007.0,0,NULL,'cancelled by operator',NULL,NULL,1790000210.0,1790000210.0,1,0);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO "meta" VALUES('store_id','18d6b4aa8de7834abc97c62b0c276c0f');
CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY, at REAL NOT NULL, reason TEXT NOT NULL, data BLOB NOT NULL);
INSERT INTO "quarantine" VALUES(1,1790000005.0,'not valid JSON: Expecting value',X'7B626164');
CREATE TABLE reasons_hourly (
        hour INTEGER NOT NULL, reason TEXT NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (hour, reason));
INSERT INTO "reasons_hourly" VALUES(497222,'550 no such user',1);
CREATE TABLE recipients (
        message_id TEXT NOT NULL, address TEXT NOT NULL, status TEXT NOT NULL,
        code INTEGER, reply TEXT NOT NULL, updated_at REAL NOT NULL,
        PRIMARY KEY (message_id, address));
INSERT INTO "recipients" VALUES('old1','b@x.org','sent',250,'250 ok',1790000101.0);
INSERT INTO "recipients" VALUES('old2','b@x.org','sent',250,'250 ok',1790000102.0);
INSERT INTO "recipients" VALUES('old2','c@x.org','deferred',451,'451 busy',1790000102.0);
INSERT INTO "recipients" VALUES('old3','b@x.org','failed',550,'550 no such user',1790000103.0);
CREATE TABLE schema_version (version INTEGER NOT NULL);
INSERT INTO "schema_version" VALUES(1);
INSERT INTO "schema_version" VALUES(2);
INSERT INTO "schema_version" VALUES(3);
INSERT INTO "schema_version" VALUES(4);
CREATE TABLE stats_hourly (
        hour INTEGER NOT NULL, kind TEXT NOT NULL, bucket INTEGER NOT NULL, n INTEGER NOT NULL,
        PRIMARY KEY (hour, kind, bucket));
INSERT INTO "stats_hourly" VALUES(497222,'attempt.sent',0,1);
INSERT INTO "stats_hourly" VALUES(497222,'done.sent',0,1);
INSERT INTO "stats_hourly" VALUES(497222,'latency',63,1);
INSERT INTO "stats_hourly" VALUES(497222,'sent',0,1);
INSERT INTO "stats_hourly" VALUES(497222,'attempt.temporary',0,2);
INSERT INTO "stats_hourly" VALUES(497222,'attempt.permanent',0,1);
INSERT INTO "stats_hourly" VALUES(497222,'done.failed',0,1);
INSERT INTO "stats_hourly" VALUES(497222,'failed',0,1);
CREATE TABLE status_counts (status TEXT PRIMARY KEY, n INTEGER NOT NULL);
INSERT INTO "status_counts" VALUES('queued',1);
INSERT INTO "status_counts" VALUES('sending',1);
INSERT INTO "status_counts" VALUES('deferred',2);
INSERT INTO "status_counts" VALUES('sent',1);
INSERT INTO "status_counts" VALUES('failed',1);
INSERT INTO "status_counts" VALUES('expired',0);
INSERT INTO "status_counts" VALUES('cancelled',1);
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
CREATE UNIQUE INDEX ix_attempt_claim ON attempts (message_id, claim) WHERE claim IS NOT NULL;
COMMIT;

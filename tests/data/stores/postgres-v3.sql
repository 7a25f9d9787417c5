--
-- PostgreSQL database dump
--


-- Dumped from database version 15.20 (Debian 15.20-0+deb12u1)
-- Dumped by pg_dump version 15.20 (Debian 15.20-0+deb12u1)

SET statement_timeout = 0;
SET lock_timeout = 0;
SET idle_in_transaction_session_timeout = 0;
SET client_encoding = 'UTF8';
SET standard_conforming_strings = on;
SELECT pg_catalog.set_config('search_path', '', false);
SET check_function_bodies = false;
SET xmloption = content;
SET client_min_messages = warning;
SET row_security = off;

--
-- Name: mailmand_count_del(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.mailmand_count_del() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO status_deltas (status, n) SELECT status, sum(n) FROM (SELECT status, -1 AS n FROM old_rows) d GROUP BY status HAVING sum(n) <> 0;
    RETURN NULL;
END $$;


--
-- Name: mailmand_count_ins(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.mailmand_count_ins() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO status_deltas (status, n) SELECT status, sum(n) FROM (SELECT status, 1 AS n FROM new_rows) d GROUP BY status HAVING sum(n) <> 0;
    RETURN NULL;
END $$;


--
-- Name: mailmand_count_upd(); Type: FUNCTION; Schema: public; Owner: -
--

CREATE FUNCTION public.mailmand_count_upd() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    INSERT INTO status_deltas (status, n) SELECT status, sum(n) FROM (SELECT status, -1 AS n FROM old_rows UNION ALL SELECT status, 1 FROM new_rows) d GROUP BY status HAVING sum(n) <> 0;
    RETURN NULL;
END $$;


SET default_tablespace = '';

SET default_table_access_method = heap;

--
-- Name: attempts; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.attempts (
    message_id text NOT NULL,
    at double precision NOT NULL,
    relay text NOT NULL,
    code integer,
    reply text NOT NULL,
    duration double precision NOT NULL,
    outcome text NOT NULL,
    daemon text,
    claim integer
);


--
-- Name: bodies; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.bodies (
    id text NOT NULL,
    raw bytea NOT NULL
);


--
-- Name: daemons; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.daemons (
    id text NOT NULL,
    host text NOT NULL,
    pid integer NOT NULL,
    version text NOT NULL,
    started_at double precision NOT NULL,
    heartbeat_at double precision NOT NULL,
    spool text NOT NULL
);


--
-- Name: depth_hourly; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.depth_hourly (
    hour bigint NOT NULL,
    depth bigint NOT NULL
);


--
-- Name: messages; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.messages (
    id text NOT NULL,
    status text NOT NULL,
    mail_from text NOT NULL,
    rcpt_to text NOT NULL,
    pending_rcpt text,
    subject text DEFAULT ''::text NOT NULL,
    priority bigint DEFAULT 0 NOT NULL,
    size bigint NOT NULL,
    idempotency_key text,
    created_at double precision NOT NULL,
    send_after double precision NOT NULL,
    due_at double precision NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    fails integer DEFAULT 0 NOT NULL,
    last_code integer,
    last_error text,
    lease_owner text,
    lease_until double precision,
    claims bigint DEFAULT 0 NOT NULL,
    updated_at double precision NOT NULL,
    finished_at double precision
);


--
-- Name: meta; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.meta (
    key text NOT NULL,
    value text NOT NULL
);


--
-- Name: quarantine; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.quarantine (
    id bigint NOT NULL,
    at double precision NOT NULL,
    reason text NOT NULL,
    data bytea NOT NULL
);


--
-- Name: quarantine_id_seq; Type: SEQUENCE; Schema: public; Owner: -
--

CREATE SEQUENCE public.quarantine_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;


--
-- Name: quarantine_id_seq; Type: SEQUENCE OWNED BY; Schema: public; Owner: -
--

ALTER SEQUENCE public.quarantine_id_seq OWNED BY public.quarantine.id;


--
-- Name: reasons_hourly; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.reasons_hourly (
    hour bigint NOT NULL,
    reason text NOT NULL,
    n bigint NOT NULL
);


--
-- Name: recipients; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.recipients (
    message_id text NOT NULL,
    address text NOT NULL,
    status text NOT NULL,
    code integer,
    reply text NOT NULL,
    updated_at double precision NOT NULL
);


--
-- Name: schema_version; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.schema_version (
    version integer NOT NULL
);


--
-- Name: stats_hourly; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.stats_hourly (
    hour bigint NOT NULL,
    kind text NOT NULL,
    bucket integer NOT NULL,
    n bigint NOT NULL
);


--
-- Name: status_deltas; Type: TABLE; Schema: public; Owner: -
--

CREATE TABLE public.status_deltas (
    status text NOT NULL,
    n bigint NOT NULL
);


--
-- Name: quarantine id; Type: DEFAULT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.quarantine ALTER COLUMN id SET DEFAULT nextval('public.quarantine_id_seq'::regclass);


--
-- Data for Name: attempts; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.attempts VALUES ('old1', 1790000101, 'relay:25', 250, '250 ok', 0.05, 'sent', 'host:100:aa', 1);
INSERT INTO public.attempts VALUES ('old2', 1790000102, 'relay:25', 451, '451 busy', 0.05, 'temporary', 'host:100:aa', 1);
INSERT INTO public.attempts VALUES ('old3', 1790000103, 'relay:25', 550, '550 no such user', 0.05, 'permanent', 'host:100:aa', 1);
INSERT INTO public.attempts VALUES ('old4', 1790000104, 'relay:25', NULL, 'connection refused', 0.05, 'temporary', 'host:100:aa', 1);


--
-- Data for Name: bodies; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.bodies VALUES ('old1', '\x46726f6d3a206140782e6f72670d0a546f3a206240782e6f72670d0a5375626a6563743a206f6c6420310d0a0d0a626f647920310d0a');
INSERT INTO public.bodies VALUES ('old2', '\x46726f6d3a206140782e6f72670d0a546f3a206240782e6f72672c206340782e6f72670d0a5375626a6563743a206f6c6420320d0a0d0a626f647920320d0a');
INSERT INTO public.bodies VALUES ('old3', '\x46726f6d3a206140782e6f72670d0a546f3a206240782e6f72670d0a5375626a6563743a206f6c6420330d0a0d0a626f647920330d0a');
INSERT INTO public.bodies VALUES ('old4', '\x46726f6d3a206140782e6f72670d0a546f3a206240782e6f72670d0a5375626a6563743a206f6c6420340d0a0d0a626f647920340d0a');
INSERT INTO public.bodies VALUES ('old5', '\x46726f6d3a206140782e6f72670d0a546f3a206240782e6f72670d0a5375626a6563743a206f6c6420350d0a0d0a626f647920350d0a');
INSERT INTO public.bodies VALUES ('old6', '\x46726f6d3a206140782e6f72670d0a546f3a206240782e6f72670d0a5375626a6563743a206f6c6420360d0a0d0a626f647920360d0a');
INSERT INTO public.bodies VALUES ('old7', '\x46726f6d3a206140782e6f72670d0a546f3a206240782e6f72670d0a5375626a6563743a206f6c6420370d0a0d0a626f647920370d0a');


--
-- Data for Name: daemons; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.daemons VALUES ('host:100:aa', 'host', 100, '0.1.0', 1790000000, 1790000060, '/var/spool/mailmand');


--
-- Data for Name: depth_hourly; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.depth_hourly VALUES (497222, 4);


--
-- Data for Name: messages; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.messages VALUES ('old6', 'queued', 'a@x.org', '["b@x.org"]', NULL, 'old 6', 0, 54, NULL, 1790000006, 1791000000, 1791000000, 0, 0, NULL, NULL, NULL, NULL, 0, 1790000006, NULL);
INSERT INTO public.messages VALUES ('old1', 'sent', 'a@x.org', '["b@x.org"]', NULL, 'old 1', 1, 54, 'key1', 1790000001, 1790000001, 1790000001, 1, 1, 250, NULL, NULL, NULL, 1, 1790000101, 1790000101);
INSERT INTO public.messages VALUES ('old2', 'deferred', 'a@x.org', '["b@x.org", "c@x.org"]', '["c@x.org"]', 'old 2', 2, 63, NULL, 1790000002, 1790000002, 1790000400, 1, 1, 451, '451 busy', NULL, NULL, 1, 1790000102, NULL);
INSERT INTO public.messages VALUES ('old3', 'failed', 'a@x.org', '["b@x.org"]', NULL, 'old 3', 0, 54, NULL, 1790000003, 1790000003, 1790000003, 1, 1, 550, '550 no such user', NULL, NULL, 1, 1790000103, 1790000103);
INSERT INTO public.messages VALUES ('old4', 'deferred', 'a@x.org', '["b@x.org"]', NULL, 'old 4', 1, 54, NULL, 1790000004, 1790000004, 1790000200, 1, 0, NULL, 'connection refused', NULL, NULL, 1, 1790000104, NULL);
INSERT INTO public.messages VALUES ('old5', 'sending', 'a@x.org', '["b@x.org"]', NULL, 'old 5', 2, 54, NULL, 1790000005, 1790000005, 1790000005, 0, 0, NULL, NULL, 'host:100:aa', 1790000500, 2, 1790000200, NULL);
INSERT INTO public.messages VALUES ('old7', 'cancelled', 'a@x.org', '["b@x.org"]', NULL, 'old 7', 1, 54, NULL, 1790000007, 1790000007, 1790000007, 0, 0, NULL, 'cancelled by operator', NULL, NULL, 1, 1790000210, 1790000210);


--
-- Data for Name: meta; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.meta VALUES ('store_id', '279df1acad9043899c90977da64e77a7');


--
-- Data for Name: quarantine; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.quarantine VALUES (1, 1790000005, 'not valid JSON: Expecting value', '\x7b626164');


--
-- Data for Name: reasons_hourly; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.reasons_hourly VALUES (497222, '550 no such user', 1);


--
-- Data for Name: recipients; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.recipients VALUES ('old1', 'b@x.org', 'sent', 250, '250 ok', 1790000101);
INSERT INTO public.recipients VALUES ('old2', 'b@x.org', 'sent', 250, '250 ok', 1790000102);
INSERT INTO public.recipients VALUES ('old2', 'c@x.org', 'deferred', 451, '451 busy', 1790000102);
INSERT INTO public.recipients VALUES ('old3', 'b@x.org', 'failed', 550, '550 no such user', 1790000103);


--
-- Data for Name: schema_version; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.schema_version VALUES (1);
INSERT INTO public.schema_version VALUES (2);
INSERT INTO public.schema_version VALUES (3);


--
-- Data for Name: stats_hourly; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.stats_hourly VALUES (497222, 'attempt.sent', 0, 1);
INSERT INTO public.stats_hourly VALUES (497222, 'done.sent', 0, 1);
INSERT INTO public.stats_hourly VALUES (497222, 'latency', 63, 1);
INSERT INTO public.stats_hourly VALUES (497222, 'sent', 0, 1);
INSERT INTO public.stats_hourly VALUES (497222, 'attempt.temporary', 0, 1);
INSERT INTO public.stats_hourly VALUES (497222, 'attempt.permanent', 0, 1);
INSERT INTO public.stats_hourly VALUES (497222, 'done.failed', 0, 1);
INSERT INTO public.stats_hourly VALUES (497222, 'failed', 0, 1);
INSERT INTO public.stats_hourly VALUES (497222, 'attempt.temporary', 0, 1);


--
-- Data for Name: status_deltas; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.status_deltas VALUES ('queued', 0);
INSERT INTO public.status_deltas VALUES ('sending', 0);
INSERT INTO public.status_deltas VALUES ('deferred', 0);
INSERT INTO public.status_deltas VALUES ('sent', 0);
INSERT INTO public.status_deltas VALUES ('failed', 0);
INSERT INTO public.status_deltas VALUES ('expired', 0);
INSERT INTO public.status_deltas VALUES ('cancelled', 0);
INSERT INTO public.status_deltas VALUES ('queued', 7);
INSERT INTO public.status_deltas VALUES ('sending', 6);
INSERT INTO public.status_deltas VALUES ('queued', -6);
INSERT INTO public.status_deltas VALUES ('sending', -1);
INSERT INTO public.status_deltas VALUES ('sent', 1);
INSERT INTO public.status_deltas VALUES ('deferred', 1);
INSERT INTO public.status_deltas VALUES ('sending', -1);
INSERT INTO public.status_deltas VALUES ('sending', -1);
INSERT INTO public.status_deltas VALUES ('failed', 1);
INSERT INTO public.status_deltas VALUES ('deferred', 1);
INSERT INTO public.status_deltas VALUES ('sending', -1);
INSERT INTO public.status_deltas VALUES ('sending', -2);
INSERT INTO public.status_deltas VALUES ('queued', 2);
INSERT INTO public.status_deltas VALUES ('sending', 1);
INSERT INTO public.status_deltas VALUES ('queued', -1);
INSERT INTO public.status_deltas VALUES ('cancelled', 1);
INSERT INTO public.status_deltas VALUES ('queued', -1);


--
-- Name: quarantine_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.quarantine_id_seq', 1, true);


--
-- Name: bodies bodies_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.bodies
    ADD CONSTRAINT bodies_pkey PRIMARY KEY (id);


--
-- Name: daemons daemons_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.daemons
    ADD CONSTRAINT daemons_pkey PRIMARY KEY (id);


--
-- Name: depth_hourly depth_hourly_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.depth_hourly
    ADD CONSTRAINT depth_hourly_pkey PRIMARY KEY (hour);


--
-- Name: messages messages_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.messages
    ADD CONSTRAINT messages_pkey PRIMARY KEY (id);


--
-- Name: meta meta_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.meta
    ADD CONSTRAINT meta_pkey PRIMARY KEY (key);


--
-- Name: quarantine quarantine_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.quarantine
    ADD CONSTRAINT quarantine_pkey PRIMARY KEY (id);


--
-- Name: recipients recipients_pkey; Type: CONSTRAINT; Schema: public; Owner: -
--

ALTER TABLE ONLY public.recipients
    ADD CONSTRAINT recipients_pkey PRIMARY KEY (message_id, address);


--
-- Name: ix_attempt_claim; Type: INDEX; Schema: public; Owner: -
--

CREATE UNIQUE INDEX ix_attempt_claim ON public.attempts USING btree (message_id, claim) WHERE (claim IS NOT NULL);


--
-- Name: ix_attempts; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_attempts ON public.attempts USING btree (message_id);


--
-- Name: ix_created; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_created ON public.messages USING btree (created_at);


--
-- Name: ix_due; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_due ON public.messages USING btree (priority DESC, due_at) WHERE (status = ANY (ARRAY['queued'::text, 'deferred'::text]));


--
-- Name: ix_finished; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_finished ON public.messages USING btree (finished_at) WHERE (finished_at IS NOT NULL);


--
-- Name: ix_lease; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_lease ON public.messages USING btree (lease_until) WHERE (status = 'sending'::text);


--
-- Name: ix_reasons_hour; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_reasons_hour ON public.reasons_hourly USING btree (hour);


--
-- Name: ix_stats_hour; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_stats_hour ON public.stats_hourly USING btree (hour);


--
-- Name: ix_status_created; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_status_created ON public.messages USING btree (status, created_at);


--
-- Name: ix_waiting_due; Type: INDEX; Schema: public; Owner: -
--

CREATE INDEX ix_waiting_due ON public.messages USING btree (due_at) WHERE (status = ANY (ARRAY['queued'::text, 'deferred'::text]));


--
-- Name: messages count_del; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER count_del AFTER DELETE ON public.messages REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION public.mailmand_count_del();


--
-- Name: messages count_ins; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER count_ins AFTER INSERT ON public.messages REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION public.mailmand_count_ins();


--
-- Name: messages count_upd; Type: TRIGGER; Schema: public; Owner: -
--

CREATE TRIGGER count_upd AFTER UPDATE ON public.messages REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION public.mailmand_count_upd();


--
-- PostgreSQL database dump complete
--



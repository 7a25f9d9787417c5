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
    daemon text
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

INSERT INTO public.attempts VALUES ('m1', 1790000010, 'r', 451, '451 busy', 0.1, 'temporary', 'h:1:a');
INSERT INTO public.attempts VALUES ('m2', 1790000020, 'r', 250, '250 ok', 0.1, 'sent', 'h:1:a');


--
-- Data for Name: bodies; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.bodies VALUES ('m1', '\x00');
INSERT INTO public.bodies VALUES ('m2', '\x01');


--
-- Data for Name: daemons; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: depth_hourly; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: messages; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.messages VALUES ('m1', 'deferred', 'a@x.org', '["b@x.org"]', NULL, 's', 0, 10, NULL, 1790000000, 1790000000, 1790000100, 1, 1, 451, '451 busy', NULL, NULL, 1, 1790000010, NULL);
INSERT INTO public.messages VALUES ('m2', 'sent', 'a@x.org', '["b@x.org"]', NULL, 's', 0, 10, NULL, 1790000000, 1790000000, 1790000000, 1, 1, NULL, NULL, NULL, NULL, 1, 1790000020, 1790000020);


--
-- Data for Name: meta; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.meta VALUES ('store_id', 'b606ce5548374c66999e31e6f4a013cc');


--
-- Data for Name: quarantine; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: reasons_hourly; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: recipients; Type: TABLE DATA; Schema: public; Owner: -
--



--
-- Data for Name: schema_version; Type: TABLE DATA; Schema: public; Owner: -
--

INSERT INTO public.schema_version VALUES (1);


--
-- Data for Name: stats_hourly; Type: TABLE DATA; Schema: public; Owner: -
--



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
INSERT INTO public.status_deltas VALUES ('deferred', 1);
INSERT INTO public.status_deltas VALUES ('sent', 1);


--
-- Name: quarantine_id_seq; Type: SEQUENCE SET; Schema: public; Owner: -
--

SELECT pg_catalog.setval('public.quarantine_id_seq', 1, false);


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



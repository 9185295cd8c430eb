-- Usage decided in the database (PostgreSQL only): usage_record_fast for one event,
-- usage_record_fast_batch for many. Python face: usage/services/fast.py.
--
-- They make the same decision as usage.services.engine for the common case, and write what it
-- writes: lock the organization's credit account, replay a stored answer or decide from windows and
-- lots, write the event, windows, lots, ledger, account and notices, answer. Anything else comes back
-- with status NULL having written nothing, and the engine decides it: a denial (its message depends on
-- role and language), a key reused with another body, a replay that would be the account's first
-- write of a new month, a period window not yet opened (period arithmetic lives in plans/periods.py),
-- a lot or hold expiry that is due, no credit account, a meter or plan the caller's catalogue does not
-- know. tests/usage/test_record_fast.py runs the same operations through both and compares.
--
-- Rules for changing this file:
--   * The waterfall lives in three places: engine.py, and the two functions here. A rule changed in
--     one changes in all three, and the differential tests must pass.
--   * This file is installed by migration usage 0006 (v1, by 0005, is the one before it). Once that
--     has landed, it is frozen: a change is a new file (record_fast_v3.sql) and a new migration that
--     installs it. tests/usage/test_record_fast.py checks that the database holds what this file says.
--   * Answers are written as JSON text, as the API writes the engine's answers (DRF's renderer:
--     compact, UTF-8, the engine's key order): strings that may need escaping come encoded from
--     Python ("kj", "head" below). Building them as jsonb cost more than deciding the event (v1 did).
--     A caller that does not send them yet (v1's, during a deploy) gets the same JSON, encoded here.
--     A replay answers its stored response (jsonb) as jsonb writes it: the same JSON, other spacing.
--   * The functions stay VOLATILE (the default): each statement inside then reads with a snapshot
--     taken after the account lock was granted, as the engine's pipelined reads do.
--
-- p_plans (built and cached by usage.services.fast): for every plan, its key (and as JSON, "kj"),
-- whether it blocks credits for this meter, and this meter's allowances in the engine's order, each
-- with its label in the request's language and in the site's language (for notices), and the start
-- of its window's JSON in an answer ("head"):
--   {"<plan id>": {"key": "plus", "kj": "\"plus\"", "blocked": false,
--                  "allowances": [{"id": 1, "limit": "50", "kind": "rolling", "seconds": 18000,
--                                  "label": "5 hours", "site_label": "5 hours",
--                                  "head": "{\"allowance\":1,\"window\":\"5 hours\",\"kind\":\"rolling\","}]}}
-- Decimals are written as trim_scale(x)::text, which is core.money.format_decimal for 4-place values.

CREATE OR REPLACE FUNCTION flex_iso(t timestamptz) RETURNS text
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    -- Python's datetime.isoformat() of a UTC datetime: microseconds only when there are some.
    SELECT replace(to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US'), '.000000', '') || '+00:00'
$$;

-- usage_record_fast: one event (POST /api/v1/usage) as one statement. Called in autocommit, the
-- statement is the whole transaction and holds the lock for no longer than itself.
-- Every read is a lookup by key: one generic plan per statement, made once per connection, and no
-- sequential scan. Planned on statistics taken while a table was small, a lookup became a scan of the
-- whole table and stayed one as the table grew (the database's CPU per request tripled in make bench).
CREATE OR REPLACE FUNCTION usage_record_fast(
    p_org bigint,
    p_meter bigint,
    p_meter_key text,
    p_credits_per_unit numeric,
    p_quantity numeric,
    p_key text,
    p_hash text,
    p_metadata jsonb,
    p_user bigint,
    p_occurred_at timestamptz,
    p_now timestamptz,
    p_plans jsonb,
    p_low_balance numeric,
    p_spend_max numeric,
    OUT status integer,
    OUT body text,
    OUT replayed boolean,
    OUT topup boolean
) LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $$
DECLARE
    acct billing_creditaccount%ROWTYPE;
    stored record;
    v_plan_id bigint;
    v_plan jsonb;
    v_allowances jsonb;
    a jsonb;
    n integer;
    i integer;
    -- The meter's windows, one per allowance, in the plan's order.
    w_id bigint[] := '{}';
    w_allowance bigint[] := '{}';
    w_start timestamptz[] := '{}';
    w_end timestamptz[] := '{}';
    w_limit numeric[] := '{}';
    w_used numeric[] := '{}';
    w_after numeric[] := '{}';
    w_kind text[] := '{}';
    w_seconds integer[] := '{}';
    w_label text[] := '{}';
    w_site_label text[] := '{}';
    w_head text[] := '{}';
    v_wid bigint;
    v_wstart timestamptz;
    v_wend timestamptz;
    v_wlimit numeric;
    v_wused numeric;
    v_room numeric;
    v_from_allowance numeric;
    v_rest numeric;
    v_cost numeric;
    v_blocked boolean;
    v_month date := (date_trunc('month', p_now AT TIME ZONE 'UTC'))::date;
    v_spent numeric;
    v_account_dirty boolean := false;
    v_left numeric;
    v_take numeric;
    lot record;
    l_id bigint[] := '{}';
    l_take numeric[] := '{}';
    l_after numeric[] := '{}';
    v_balance numeric;
    v_event_id bigint;
    v_windows text := '';
    v_lots text := '';
    v_body text;
    pct integer;
BEGIN
    replayed := false;
    topup := false;

    SELECT * INTO acct FROM billing_creditaccount WHERE organization_id = p_org FOR NO KEY UPDATE;
    IF NOT FOUND
       OR acct.next_lot_expiry <= p_now   -- expiring lots is the engine's work
       OR acct.next_hold_expiry <= p_now  -- so is releasing expired holds
    THEN
        RETURN;
    END IF;

    SELECT e.id, e.request_hash, e.http_status, e.response INTO stored
      FROM usage_usageevent e
     WHERE e.organization_id = p_org AND e.kind = 'usage' AND e.idempotency_key = p_key;
    IF FOUND THEN
        IF stored.request_hash <> p_hash OR acct.spend_month IS DISTINCT FROM v_month THEN
            RETURN;  -- 422, worded by the engine; or the engine's first write of a new month
        END IF;
        status := stored.http_status;
        body := (jsonb_build_object('id', stored.id) || stored.response)::text;
        replayed := true;
        RETURN;
    END IF;

    -- Read after the lock (a plan changed by the transaction we waited for is seen).
    SELECT s.plan_id INTO v_plan_id FROM plans_subscription s WHERE s.organization_id = p_org;
    v_plan := CASE WHEN v_plan_id IS NULL THEN NULL ELSE p_plans -> v_plan_id::text END;
    IF v_plan_id IS NOT NULL AND v_plan IS NULL THEN
        RETURN;  -- a plan newer than the caller's catalogue
    END IF;
    v_allowances := COALESCE(v_plan -> 'allowances', '[]');
    v_blocked := COALESCE((v_plan ->> 'blocked')::boolean, false);

    -- Current windows (Engine._take_current): the one that has started; for a rolling allowance,
    -- failing that, the soonest that starts after p_now (opened by a request that read the clock
    -- later); failing that, a new rolling window from p_now. A period window not yet opened: engine.
    n := jsonb_array_length(v_allowances);
    FOR i IN 1 .. n LOOP
        a := v_allowances -> (i - 1);
        SELECT w.id, w.start, w."end", w."limit", w.used INTO v_wid, v_wstart, v_wend, v_wlimit, v_wused
          FROM usage_allowancewindow w
         WHERE w.organization_id = p_org AND w.allowance_id = (a ->> 'id')::bigint AND w."end" > p_now
           AND (w.start <= p_now OR a ->> 'kind' = 'rolling')
         ORDER BY w.start <= p_now DESC, CASE WHEN w.start <= p_now THEN w.start END DESC, w.start
         LIMIT 1;
        IF NOT FOUND THEN
            IF a ->> 'kind' <> 'rolling' OR a ->> 'seconds' IS NULL THEN
                RETURN;
            END IF;
            v_wid := NULL;
            v_wstart := p_now;
            v_wend := p_now + make_interval(secs => (a ->> 'seconds')::integer);
            v_wlimit := (a ->> 'limit')::numeric;
            v_wused := 0;
        END IF;
        w_id := w_id || v_wid;
        w_allowance := w_allowance || (a ->> 'id')::bigint;
        w_start := w_start || v_wstart;
        w_end := w_end || v_wend;
        w_limit := w_limit || v_wlimit;
        w_used := w_used || v_wused;
        v_room := least(v_room, greatest(v_wlimit - v_wused, 0));  -- least() skips the first NULL
        w_kind := w_kind || (a ->> 'kind');
        w_seconds := w_seconds || (a ->> 'seconds')::integer;
        w_label := w_label || (a ->> 'label');
        w_site_label := w_site_label || (a ->> 'site_label');
        w_head := w_head || COALESCE(a ->> 'head', '{"allowance":' || (a ->> 'id') || ',"window":'
                                     || to_json(a ->> 'label') || ',"kind":' || to_json(a ->> 'kind') || ',');
    END LOOP;

    -- The waterfall (Engine.evaluate): the smallest room across the windows, then credits.
    v_room := COALESCE(v_room, 0);  -- no window: nothing included
    v_from_allowance := least(p_quantity, v_room);
    v_rest := p_quantity - v_from_allowance;
    v_cost := round(v_rest * p_credits_per_unit, 4);  -- core.money.round_credits (half up; v_cost >= 0)
    v_balance := acct.balance;
    v_spent := CASE WHEN acct.spend_month = v_month THEN acct.spend_month_total ELSE 0 END;
    v_account_dirty := acct.spend_month IS DISTINCT FROM v_month;

    IF NOT (v_rest = 0 OR (v_cost = 0 AND NOT v_blocked)) THEN
        IF v_blocked OR v_balance = 0
           OR (acct.monthly_spend_cap IS NOT NULL AND greatest(acct.monthly_spend_cap - v_spent, 0) < v_cost) THEN
            RETURN;  -- denied: worded by the engine
        END IF;
        v_left := v_cost;
        FOR lot IN
            SELECT c.id, c.remaining FROM billing_creditlot c
             WHERE c.organization_id = p_org AND c.is_open
               AND c.effective_at <= p_now AND (c.expires_at IS NULL OR c.expires_at > p_now)
             ORDER BY c.priority, c.expires_at NULLS LAST, c.category <> 'promotional', c.created_at, c.id
        LOOP
            EXIT WHEN v_left <= 0;
            v_take := least(v_left, lot.remaining);
            v_left := v_left - v_take;
            v_balance := v_balance - v_take;
            l_id := l_id || lot.id;
            l_take := l_take || v_take;
            l_after := l_after || v_balance;
        END LOOP;
        IF v_left > 0 THEN
            RETURN;  -- not enough credits: denied
        END IF;
        v_spent := least(v_spent + v_cost, p_spend_max);
        v_account_dirty := true;
    END IF;

    -- Allowed. The answer (usage.services.record.decision_fields, without the event's id) as JSON
    -- text in the engine's key order and the API's separators, as usage_record_fast_batch writes it.
    FOR i IN 1 .. n LOOP
        w_after := w_after || (w_used[i] + v_from_allowance);
        v_windows := v_windows || CASE WHEN i > 1 THEN ',' ELSE '' END || w_head[i]
            || '"limit":"' || trim_scale(w_limit[i])
            || '","used":"' || trim_scale(w_after[i])
            || '","remaining":"' || trim_scale(greatest(w_limit[i] - w_after[i], 0))
            || CASE WHEN w_id[i] IS NOT NULL OR w_after[i] > 0 OR w_kind[i] = 'period'
                    THEN '","starts_at":"' || flex_iso(w_start[i]) || '","resets_at":"' || flex_iso(w_end[i]) || '"}'
                    ELSE '","starts_at":null,"resets_at":null}' END;
    END LOOP;
    FOR i IN 1 .. coalesce(array_length(l_id, 1), 0) LOOP
        v_lots := v_lots || CASE WHEN i > 1 THEN ',' ELSE '' END
            || '{"lot":' || l_id[i] || ',"credits":"' || trim_scale(l_take[i]) || '"}';
    END LOOP;
    v_body := '{"decision":"allowed","organization":' || p_org
        || ',"meter":' || to_json(p_meter_key)::text
        || ',"quantity":"' || trim_scale(p_quantity)
        || '","from_allowance":"' || trim_scale(v_from_allowance)
        || '","credits_charged":"' || trim_scale(v_cost)
        || '","windows":[' || v_windows
        || '],"lots":[' || v_lots
        || '],"credits":{"balance":"' || trim_scale(v_balance)
        || '"},"plan":' || COALESCE(v_plan ->> 'kj', to_json(v_plan ->> 'key')::text, 'null') || '}';

    -- Writes: the event, windows, lots with their ledger entries, the account, notices.
    INSERT INTO usage_usageevent (organization_id, meter_id, kind, decision, quantity, from_allowance,
                                  credits_charged, idempotency_key, request_hash, http_status, response,
                                  metadata, user_id, occurred_at, created_at)
    VALUES (p_org, p_meter, 'usage', 'allowed', p_quantity, v_from_allowance, v_cost, p_key, p_hash, 201,
            v_body::jsonb, p_metadata, p_user, COALESCE(p_occurred_at, p_now), p_now)
    RETURNING id INTO v_event_id;

    IF v_from_allowance > 0 THEN
        FOR i IN 1 .. n LOOP
            IF w_id[i] IS NULL THEN
                INSERT INTO usage_allowancewindow (organization_id, allowance_id, start, "end", "limit", used)
                VALUES (p_org, w_allowance[i], w_start[i], w_end[i], w_limit[i], w_after[i]);
            ELSE
                UPDATE usage_allowancewindow SET used = w_after[i] WHERE id = w_id[i];
            END IF;
            IF w_limit[i] > 0 THEN  -- Engine._notices: crossing 50, 80 or 100 % of a window
                FOREACH pct IN ARRAY ARRAY[50, 80, 100] LOOP
                    IF w_used[i] * 100 < w_limit[i] * pct AND w_limit[i] * pct <= w_after[i] * 100 THEN  -- exact
                        INSERT INTO usage_notice (organization_id, kind, dedupe_key, payload, created_at)
                        VALUES (p_org, 'window_threshold', w_allowance[i] || ':' || flex_iso(w_start[i]) || ':' || pct,
                                jsonb_build_object('percent', pct, 'meter_id', p_meter,
                                                   'window', w_site_label[i], 'window_kind', w_kind[i],
                                                   'window_seconds', w_seconds[i],
                                                   'limit', trim_scale(w_limit[i])::text, 'resets_at', flex_iso(w_end[i])),
                                p_now)
                        ON CONFLICT DO NOTHING;
                    END IF;
                END LOOP;
            END IF;
        END LOOP;
    END IF;

    IF array_length(l_id, 1) > 0 THEN
        UPDATE billing_creditlot c SET remaining = c.remaining - t.take
          FROM unnest(l_id, l_take) AS t(id, take) WHERE c.id = t.id;
        INSERT INTO billing_ledgerentry (organization_id, lot_id, kind, amount, balance_after, reference,
                                         reason, actor_id, created_at)
        SELECT p_org, t.id, 'consume', -t.take, t.after, 'usage:' || v_event_id, '', NULL, p_now
          FROM unnest(l_id, l_take, l_after) WITH ORDINALITY AS t(id, take, after, ord) ORDER BY t.ord;
    END IF;

    IF v_account_dirty THEN
        UPDATE billing_creditaccount
           SET balance = v_balance, spend_month = v_month, spend_month_total = v_spent, updated_at = p_now
         WHERE id = acct.id;
    END IF;

    IF acct.balance > 0 AND v_balance = 0 THEN
        INSERT INTO usage_notice (organization_id, kind, dedupe_key, payload, created_at)
        VALUES (p_org, 'credits_depleted', to_char(p_now AT TIME ZONE 'UTC', 'YYYY-MM-DD'),
                '{"balance": "0"}', p_now)
        ON CONFLICT DO NOTHING;
    ELSIF acct.balance >= p_low_balance AND p_low_balance > v_balance THEN
        INSERT INTO usage_notice (organization_id, kind, dedupe_key, payload, created_at)
        VALUES (p_org, 'credits_low', to_char(p_now AT TIME ZONE 'UTC', 'YYYY-MM-DD'),
                jsonb_build_object('balance', trim_scale(v_balance)::text, 'threshold', trim_scale(p_low_balance)::text), p_now)
        ON CONFLICT DO NOTHING;
    END IF;
    topup := COALESCE(acct.auto_topup_enabled AND acct.balance >= acct.auto_topup_min_balance
                      AND acct.auto_topup_min_balance > v_balance, false);

    status := 201;
    body := '{"id":' || v_event_id || ',' || substr(v_body, 2);
END;
$$;

-- usage_record_fast_batch: the same decision for many events at once (POST /api/v1/usage/batch).
--
-- Locks every organization of the batch (in id order, as every writer does), then decides and
-- writes in rounds: round k holds each organization's k-th event, so within a round no two events
-- share an organization (two updates of one row in one statement would lose one) and one statement
-- decides and writes the whole round; the next round's statement sees what this one wrote. An event
-- the engine must decide (status NULL, nothing written) takes its organization's later events with
-- it: the caller runs them through the engine, in order, in the same transaction. So do events past
-- the 16th of one organization: a statement per round would cost more than the engine's memory.
--
-- p_events: [[organization, meter id, "quantity", key, request hash, metadata, user or null,
--             occurred_at or null], ...]
-- p_meters: {"<meter id>": {"key": "codex.local_task", "kj": "\"codex.local_task\"", "cpu": "5",
--                            "plans": <p_plans above>}}.
-- Returns one row per event it reached: its position (1-based), status (NULL: the engine's), body,
-- replayed, whether the batch took the organization's balance across the auto top-up minimum (on its
-- last event), and the organization's balance before the batch.

CREATE OR REPLACE FUNCTION usage_record_fast_batch(
    p_events jsonb,
    p_now timestamptz,
    p_meters jsonb,
    p_low_balance numeric,
    p_spend_max numeric
) RETURNS TABLE (idx integer, status integer, body text, replayed boolean, topup boolean,
                start_balance numeric)
LANGUAGE plpgsql SET plan_cache_mode = force_generic_plan SET enable_seqscan = off AS $$
DECLARE
    -- The events, unpacked from p_events (one JSON value: cheaper to send and to read than arrays),
    -- with each one's round: its place among its organization's events.
    e_org bigint[];
    e_meter bigint[];
    e_quantity numeric[];
    e_key text[];
    e_hash text[];
    e_metadata jsonb[];
    e_user bigint[];
    e_occurred_at timestamptz[];
    e_round integer[];
    v_rounds integer;
    v_beyond bigint[];  -- organizations with events past the last round: the engine finishes them
    v_month date := (date_trunc('month', p_now AT TIME ZONE 'UTC'))::date;
    v_seq regclass := pg_get_serial_sequence('usage_usageevent', 'id')::regclass;
    v_fallen bigint[] := '{}';
    r integer;
    o_idx integer[] := '{}';
    o_status integer[] := '{}';
    o_body text[] := '{}';
    o_replayed boolean[] := '{}';
    o_org bigint[] := '{}';
    v_orgs bigint[];
    v_start numeric[];  -- each organization's balance before the batch
    v_topup bigint[];
    x_idx integer[];
    x_org bigint[];
    x_status integer[];
    x_body text[];
    x_replayed boolean[];
    -- This round's events (all of them when there is one round).
    r_idx integer[];
    r_org bigint[];
    r_meter bigint[];
    r_quantity numeric[];
    r_key text[];
    r_hash text[];
    r_metadata jsonb[];
    r_user bigint[];
    r_occurred_at timestamptz[];
BEGIN
    SELECT array_agg((t.v ->> 0)::bigint ORDER BY t.n), array_agg((t.v ->> 1)::bigint ORDER BY t.n),
           array_agg((t.v ->> 2)::numeric ORDER BY t.n), array_agg(t.v ->> 3 ORDER BY t.n),
           array_agg(t.v ->> 4 ORDER BY t.n), array_agg(t.v -> 5 ORDER BY t.n),
           array_agg((t.v ->> 6)::bigint ORDER BY t.n), array_agg((t.v ->> 7)::timestamptz ORDER BY t.n),
           array_agg(t.rnd ORDER BY t.n), least(max(t.rnd), 16),
           array_agg(DISTINCT (t.v ->> 0)::bigint) FILTER (WHERE t.rnd > 16)
      INTO e_org, e_meter, e_quantity, e_key, e_hash, e_metadata, e_user, e_occurred_at, e_round, v_rounds, v_beyond
      FROM (SELECT e.v, e.n, row_number() OVER (PARTITION BY e.v ->> 0 ORDER BY e.n)::integer AS rnd
              FROM jsonb_array_elements(p_events) WITH ORDINALITY AS e(v, n)) t;

    SELECT array_agg(a.organization_id), array_agg(a.balance) INTO v_orgs, v_start
      FROM (SELECT c.organization_id, c.balance FROM billing_creditaccount c WHERE c.organization_id = ANY (e_org)
             ORDER BY c.organization_id FOR NO KEY UPDATE) a;

    FOR r IN 1 .. COALESCE(v_rounds, 0) LOOP
        IF v_rounds = 1 THEN
            r_idx := ARRAY(SELECT generate_series(1, cardinality(e_org)));
            r_org := e_org; r_meter := e_meter; r_quantity := e_quantity; r_key := e_key; r_hash := e_hash;
            r_metadata := e_metadata; r_user := e_user; r_occurred_at := e_occurred_at;
        ELSE
            SELECT array_agg(t.n::integer ORDER BY t.n), array_agg(t.org ORDER BY t.n), array_agg(t.meter ORDER BY t.n),
                   array_agg(t.qty ORDER BY t.n), array_agg(t.key ORDER BY t.n), array_agg(t.hash ORDER BY t.n),
                   array_agg(t.meta ORDER BY t.n), array_agg(t.usr ORDER BY t.n), array_agg(t.occurred ORDER BY t.n)
              INTO r_idx, r_org, r_meter, r_quantity, r_key, r_hash, r_metadata, r_user, r_occurred_at
              FROM unnest(e_org, e_meter, e_quantity, e_key, e_hash, e_metadata, e_user, e_occurred_at, e_round)
                   WITH ORDINALITY AS t(org, meter, qty, key, hash, meta, usr, occurred, rnd, n)
             WHERE t.rnd = r AND t.org <> ALL (v_fallen);
            IF r_idx IS NULL THEN
                CONTINUE;
            END IF;
        END IF;
        -- One plan for every call (plan_cache_mode = force_generic_plan, above): a plan for each
        -- call's arrays cost more to make than to run. Without sequential scans (enable_seqscan =
        -- off): this statement reads a handful of rows per event, by index.
        WITH e AS (  -- meter_key is NULL for a meter p_meters does not hold
            SELECT t.idx, t.org, t.meter, t.qty, t.key, t.hash, t.meta, t.usr, t.occurred,
                   p_meters -> t.meter::text ->> 'key' AS meter_key,
                   COALESCE(p_meters -> t.meter::text ->> 'kj', to_json(p_meters -> t.meter::text ->> 'key')::text) AS meter_kj,
                   (p_meters -> t.meter::text ->> 'cpu')::numeric AS cpu,
                   p_meters -> t.meter::text -> 'plans' AS plans
              FROM unnest(r_idx, r_org, r_meter, r_quantity, r_key, r_hash, r_metadata, r_user, r_occurred_at)
                   AS t(idx, org, meter, qty, key, hash, meta, usr, occurred)
        ), a AS (  -- the account, plan and any stored answer, read after the lock (rows stay narrow:
                   -- every step below copies them)
            SELECT e.idx, e.org, e.meter, e.qty, e.key, e.hash, e.meta, e.usr, e.occurred, e.meter_key, e.meter_kj, e.cpu,
                   acc.id AS acct_id, acc.balance, acc.spend_month, acc.spend_month_total,
                   acc.monthly_spend_cap, acc.next_lot_expiry, acc.next_hold_expiry,
                   acc.auto_topup_enabled, acc.auto_topup_min_balance,
                   sub.plan_id, e.plans -> sub.plan_id::text AS plan,
                   st.id AS stored_id, st.request_hash AS stored_hash, st.http_status AS stored_status,
                   st.response AS stored_response
              FROM e
              LEFT JOIN billing_creditaccount acc ON acc.organization_id = e.org
              LEFT JOIN plans_subscription sub ON sub.organization_id = e.org
              -- A lookup by index per event, whatever the statistics say: OFFSET 0 keeps the planner
              -- from making it a join that reads every event (it did, with statistics taken while the
              -- table was small, and the batch took seconds). The same for lots below.
              LEFT JOIN LATERAL (SELECT x.id, x.request_hash, x.http_status, x.response FROM usage_usageevent x
                                  WHERE x.organization_id = e.org AND x.kind = 'usage'
                                    AND x.idempotency_key = e.key OFFSET 0) st ON true
        ), w AS (  -- each event's windows, as in usage_record_fast
            SELECT a.idx, al.ord, (al.v ->> 'id')::bigint AS allowance, al.v ->> 'kind' AS kind,
                   (al.v ->> 'seconds')::integer AS seconds, al.v ->> 'label' AS label,
                   al.v ->> 'site_label' AS site_label,
                   COALESCE(al.v ->> 'head', '{"allowance":' || (al.v ->> 'id') || ',"window":' || to_json(al.v ->> 'label')
                            || ',"kind":' || to_json(al.v ->> 'kind') || ',') AS head,
                   cw.id AS wid,
                   COALESCE(cw.start, p_now) AS start,
                   COALESCE(cw."end", p_now + make_interval(secs => (al.v ->> 'seconds')::integer)) AS "end",
                   COALESCE(cw."limit", (al.v ->> 'limit')::numeric) AS "limit",
                   COALESCE(cw.used, 0) AS used,
                   cw.id IS NULL AND (al.v ->> 'kind' <> 'rolling' OR al.v ->> 'seconds' IS NULL) AS missing
              FROM a
             CROSS JOIN LATERAL jsonb_array_elements(COALESCE(a.plan -> 'allowances', '[]')) WITH ORDINALITY AS al(v, ord)
              LEFT JOIN LATERAL (
                    SELECT x.id, x.start, x."end", x."limit", x.used FROM usage_allowancewindow x
                     WHERE x.organization_id = a.org AND x.allowance_id = (al.v ->> 'id')::bigint
                       AND x."end" > p_now AND (x.start <= p_now OR al.v ->> 'kind' = 'rolling')
                     ORDER BY x.start <= p_now DESC, CASE WHEN x.start <= p_now THEN x.start END DESC, x.start
                     LIMIT 1) cw ON true
             WHERE a.stored_id IS NULL AND a.meter_key IS NOT NULL
        ), c AS (  -- the waterfall: the smallest room, then what the rest costs
            SELECT a.*, COALESCE(wr.missing, false) AS missing,
                   least(a.qty, COALESCE(wr.room, 0)) AS from_allowance,
                   a.qty - least(a.qty, COALESCE(wr.room, 0)) AS rest,
                   round((a.qty - least(a.qty, COALESCE(wr.room, 0))) * a.cpu, 4) AS cost,
                   COALESCE((a.plan ->> 'blocked')::boolean, false) AS blocked,
                   CASE WHEN a.spend_month = v_month THEN a.spend_month_total ELSE 0 END AS spent
              FROM a
              LEFT JOIN (SELECT w.idx, min(greatest(w."limit" - w.used, 0)) AS room, bool_or(w.missing) AS missing
                           FROM w GROUP BY w.idx) wr ON wr.idx = a.idx
        ), c2 AS (
            SELECT c.*, NOT (c.rest = 0 OR (c.cost = 0 AND NOT c.blocked)) AS needs_credits FROM c
        ), lt AS (  -- drawable lots of the events that need credits, in draw order
            SELECT c2.idx, l.id AS lot_id, l.remaining,
                   sum(l.remaining) OVER draw - l.remaining AS before,
                   row_number() OVER draw AS pos
              FROM c2
             CROSS JOIN LATERAL (SELECT o.* FROM billing_creditlot o
                                  WHERE o.organization_id = c2.org AND o.is_open AND o.effective_at <= p_now
                                    AND (o.expires_at IS NULL OR o.expires_at > p_now) OFFSET 0) l
             WHERE c2.stored_id IS NULL AND c2.needs_credits AND NOT c2.blocked AND c2.balance > 0
            WINDOW draw AS (PARTITION BY c2.idx
                            ORDER BY l.priority, l.expires_at NULLS LAST, l.category <> 'promotional', l.created_at, l.id)
        ), d AS (  -- the decision; status NULL: the engine decides (a denial, a reused key, ...)
            SELECT c2.*, s.status,
                   s.status IS NOT NULL AND c2.stored_id IS NULL AS fresh,
                   s.status IS NOT NULL AND c2.stored_id IS NULL AND c2.needs_credits AS credits,
                   CASE WHEN s.status IS NOT NULL AND c2.stored_id IS NULL THEN nextval(v_seq) END AS event_id
              FROM c2
              LEFT JOIN (SELECT lt.idx, sum(lt.remaining) AS available FROM lt GROUP BY lt.idx) av ON av.idx = c2.idx
             CROSS JOIN LATERAL (SELECT CASE
                    WHEN c2.acct_id IS NULL OR c2.meter_key IS NULL OR c2.next_lot_expiry <= p_now
                         OR c2.next_hold_expiry <= p_now OR (c2.plan_id IS NOT NULL AND c2.plan IS NULL) THEN NULL
                    WHEN c2.stored_id IS NOT NULL THEN  -- a replay (as usage_record_fast)
                         CASE WHEN c2.stored_hash = c2.hash AND c2.spend_month IS NOT DISTINCT FROM v_month
                              THEN c2.stored_status END
                    WHEN c2.missing THEN NULL
                    WHEN NOT c2.needs_credits THEN 201
                    WHEN c2.blocked OR c2.balance = 0 OR COALESCE(av.available, 0) < c2.cost
                         OR (c2.monthly_spend_cap IS NOT NULL
                             AND greatest(c2.monthly_spend_cap - c2.spent, 0) < c2.cost) THEN NULL
                    ELSE 201 END AS status) s
        ), dd AS (
            SELECT d.*,
                   CASE WHEN d.credits THEN d.balance - d.cost ELSE d.balance END AS new_balance,
                   CASE WHEN d.credits THEN least(d.spent + d.cost, p_spend_max) ELSE d.spent END AS new_spent
              FROM d
        ), dr AS (  -- what each allowed event draws from each lot
            SELECT lt.idx, lt.pos, lt.lot_id, least(lt.remaining, dd.cost - lt.before) AS take,
                   dd.balance - least(lt.before + lt.remaining, dd.cost) AS after, dd.org, dd.event_id
              FROM lt JOIN dd ON dd.idx = lt.idx
             WHERE dd.credits AND lt.before < dd.cost
        -- The answer is written as JSON text, in the engine's key order, as the API writes the
        -- engine's (compact, UTF-8), from pieces: strings that need escaping (meter and plan keys,
        -- window labels) come already encoded from Python (p_meters' "kj" and the allowances'
        -- "head"). Building it as jsonb cost more than deciding the event.
        ), wj AS MATERIALIZED (  -- usage.services.engine.Slot.as_dict
            SELECT w.idx, string_agg(w.head
                       || '"limit":"' || trim_scale(w."limit")
                       || '","used":"' || trim_scale(w.used + dd.from_allowance)
                       || '","remaining":"' || trim_scale(greatest(w."limit" - w.used - dd.from_allowance, 0))
                       || CASE WHEN w.wid IS NOT NULL OR w.used + dd.from_allowance > 0 OR w.kind = 'period'
                               THEN '","starts_at":"' || flex_iso(w.start) || '","resets_at":"' || flex_iso(w."end") || '"}'
                               ELSE '","starts_at":null,"resets_at":null}' END,
                       ',' ORDER BY w.ord) AS j
              FROM w JOIN dd ON dd.idx = w.idx WHERE dd.fresh GROUP BY w.idx
        ), lj AS MATERIALIZED (
            SELECT dr.idx, string_agg('{"lot":' || dr.lot_id || ',"credits":"' || trim_scale(dr.take) || '"}', ','
                                      ORDER BY dr.pos) AS j
              FROM dr GROUP BY dr.idx
        ), b AS MATERIALIZED (  -- usage.services.record.decision_fields, without the event's id
            SELECT dd.idx, '{"decision":"allowed","organization":' || dd.org
                       || ',"meter":' || dd.meter_kj
                       || ',"quantity":"' || trim_scale(dd.qty)
                       || '","from_allowance":"' || trim_scale(dd.from_allowance)
                       || '","credits_charged":"' || trim_scale(dd.cost)
                       || '","windows":[' || COALESCE(wj.j, '')
                       || '],"lots":[' || COALESCE(lj.j, '')
                       || '],"credits":{"balance":"' || trim_scale(dd.new_balance)
                       || '"},"plan":' || COALESCE(dd.plan ->> 'kj', to_json(dd.plan ->> 'key')::text, 'null') || '}' AS body
              FROM dd LEFT JOIN wj ON wj.idx = dd.idx LEFT JOIN lj ON lj.idx = dd.idx
             WHERE dd.fresh
        ), ins_event AS (
            INSERT INTO usage_usageevent (id, organization_id, meter_id, kind, decision, quantity, from_allowance,
                                          credits_charged, idempotency_key, request_hash, http_status, response,
                                          metadata, user_id, occurred_at, created_at)
            SELECT dd.event_id, dd.org, dd.meter, 'usage', 'allowed', dd.qty, dd.from_allowance, dd.cost, dd.key,
                   dd.hash, 201, b.body::jsonb, dd.meta, dd.usr, COALESCE(dd.occurred, p_now), p_now
              FROM dd JOIN b ON b.idx = dd.idx
             ORDER BY dd.event_id
        ), ins_window AS (
            INSERT INTO usage_allowancewindow (organization_id, allowance_id, start, "end", "limit", used)
            SELECT dd.org, w.allowance, w.start, w."end", w."limit", w.used + dd.from_allowance
              FROM w JOIN dd ON dd.idx = w.idx
             WHERE dd.fresh AND dd.from_allowance > 0 AND w.wid IS NULL
        ), upd_window AS (
            UPDATE usage_allowancewindow x SET used = w.used + dd.from_allowance
              FROM w JOIN dd ON dd.idx = w.idx
             WHERE x.id = w.wid AND dd.fresh AND dd.from_allowance > 0
        ), upd_lot AS (
            UPDATE billing_creditlot l SET remaining = l.remaining - dr.take FROM dr WHERE l.id = dr.lot_id
        ), ins_ledger AS (
            INSERT INTO billing_ledgerentry (organization_id, lot_id, kind, amount, balance_after, reference, reason,
                                             actor_id, created_at)
            SELECT dr.org, dr.lot_id, 'consume', -dr.take, dr.after, 'usage:' || dr.event_id, '', NULL, p_now
              FROM dr ORDER BY dr.idx, dr.pos
        ), upd_account AS (
            UPDATE billing_creditaccount acc
               SET balance = dd.new_balance, spend_month = v_month, spend_month_total = dd.new_spent, updated_at = p_now
              FROM dd
             WHERE acc.id = dd.acct_id AND dd.fresh AND (dd.credits OR dd.spend_month IS DISTINCT FROM v_month)
        ), ins_notice AS (  -- Engine._notices: window thresholds crossed (credits: after the rounds)
            INSERT INTO usage_notice (organization_id, kind, dedupe_key, payload, created_at)
            SELECT dd.org, 'window_threshold', w.allowance || ':' || flex_iso(w.start) || ':' || pct,
                   jsonb_build_object('percent', pct, 'meter_id', dd.meter, 'window', w.site_label,
                                      'window_kind', w.kind, 'window_seconds', w.seconds,
                                      'limit', trim_scale(w."limit")::text, 'resets_at', flex_iso(w."end")),
                   p_now
              FROM w JOIN dd ON dd.idx = w.idx CROSS JOIN unnest(ARRAY[50, 80, 100]) AS pct
             WHERE dd.fresh AND dd.from_allowance > 0 AND w."limit" > 0
               AND w.used * 100 < w."limit" * pct AND w."limit" * pct <= (w.used + dd.from_allowance) * 100
            ON CONFLICT DO NOTHING
        )
        SELECT array_agg(dd.idx), array_agg(dd.org), array_agg(dd.status),
               array_agg(CASE WHEN dd.fresh THEN '{"id":' || dd.event_id || ',' || substr(b.body, 2)
                              WHEN dd.status IS NOT NULL
                              THEN (jsonb_build_object('id', dd.stored_id) || dd.stored_response)::text END),
               array_agg(dd.status IS NOT NULL AND NOT dd.fresh)
          INTO x_idx, x_org, x_status, x_body, x_replayed
          FROM dd LEFT JOIN b ON b.idx = dd.idx;

        IF x_idx IS NULL THEN
            CONTINUE;
        END IF;
        o_idx := o_idx || x_idx;
        o_status := o_status || x_status;
        o_body := o_body || x_body;
        o_replayed := o_replayed || x_replayed;
        o_org := o_org || x_org;
        FOR i IN 1 .. array_length(x_idx, 1) LOOP
            IF x_status[i] IS NULL THEN
                v_fallen := v_fallen || x_org[i];
            END IF;
        END LOOP;
    END LOOP;

    -- Credits notices and the auto top-up check compare each organization's balance before and after
    -- the whole batch, as the engine does. An organization the engine took over is left to it: the
    -- caller hands it the balance before the batch (start_balance).
    WITH moved AS (
        SELECT acc.organization_id AS org, t.before, acc.balance AS after, acc.auto_topup_enabled,
               acc.auto_topup_min_balance
          FROM unnest(v_orgs, v_start) AS t(org, before)
          JOIN billing_creditaccount acc ON acc.organization_id = t.org
         WHERE t.org <> ALL (v_fallen) AND t.org <> ALL (COALESCE(v_beyond, '{}')) AND acc.balance <> t.before
    ), ins_notice AS (
        INSERT INTO usage_notice (organization_id, kind, dedupe_key, payload, created_at)
        SELECT m.org, 'credits_depleted', to_char(p_now AT TIME ZONE 'UTC', 'YYYY-MM-DD'), '{"balance": "0"}', p_now
          FROM moved m WHERE m.before > 0 AND m.after = 0
        UNION ALL
        SELECT m.org, 'credits_low', to_char(p_now AT TIME ZONE 'UTC', 'YYYY-MM-DD'),
               jsonb_build_object('balance', trim_scale(m.after)::text, 'threshold', trim_scale(p_low_balance)::text),
               p_now
          FROM moved m WHERE NOT (m.before > 0 AND m.after = 0) AND m.before >= p_low_balance
           AND p_low_balance > m.after
        ON CONFLICT DO NOTHING
    )
    SELECT array_agg(m.org) INTO v_topup FROM moved m
     WHERE m.auto_topup_enabled AND m.before >= m.auto_topup_min_balance AND m.auto_topup_min_balance > m.after;

    -- The top-up flag rides on each such organization's last event.
    RETURN QUERY
        SELECT t.i, t.s, t.b, t.r,
               t.o = ANY (COALESCE(v_topup, '{}')) AND t.i = max(t.i) OVER (PARTITION BY t.o),
               s.before
          FROM unnest(o_idx, o_status, o_body, o_replayed, o_org) AS t(i, s, b, r, o)
          LEFT JOIN unnest(v_orgs, v_start) AS s(org, before) ON s.org = t.o;
END;
$$;

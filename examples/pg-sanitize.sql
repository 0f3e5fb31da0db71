-- Personal data in the example schema, rewritten by pg-sanitize-hook.sh.
-- Adapt the UPDATE statements to your schema; the functions are generic.
--
-- Schema this file expects:
--   users(id, email UNIQUE, name, phone, card)
--   orders(id, user_email REFERENCES users(email), ...)
--   tickets(id, user_email REFERENCES users(email), ...)
--
-- Pseudonyms are keyed by the setting cowfs.key (the hook sets it from
-- $COWFS_HOOK_KEY, the pool's pseudonym sub-key): the same value gets the same
-- pseudonym in every table and every clone, so joins keep their row counts. Email
-- pseudonyms are exactly the ones the file rules write (HMAC-SHA256 computed here
-- in plain SQL, no extension needed), so a database and the logs of one clone
-- still agree on who is who.

-- HMAC-SHA256 pads of the key, computed once per session.
DO $$
DECLARE
  k bytea := decode(current_setting('cowfs.key'), 'hex');
  ip bytea;
  op bytea;
BEGIN
  IF length(k) > 64 THEN k := sha256(k); END IF;
  k := k || decode(repeat('00', 64 - length(k)), 'hex');
  ip := k;
  op := k;
  FOR i IN 0..63 LOOP
    ip := set_byte(ip, i, get_byte(k, i) # 54);
    op := set_byte(op, i, get_byte(k, i) # 92);
  END LOOP;
  PERFORM set_config('cowfs.ipad', encode(ip, 'hex'), false);
  PERFORM set_config('cowfs.opad', encode(op, 'hex'), false);
END $$;

-- hex(HMAC-SHA256(key, label 0x00 value 0x00000000)): the first block of the
-- keyed stream the file rules use for (label, value).
CREATE FUNCTION pg_temp.mac(label text, v text) RETURNS text LANGUAGE sql AS
$$ SELECT encode(sha256(decode(current_setting('cowfs.opad'), 'hex')
                 || sha256(decode(current_setting('cowfs.ipad'), 'hex')
                           || convert_to(label, 'UTF8') || '\x00'::bytea
                           || convert_to(v, 'UTF8') || '\x00000000'::bytea)), 'hex') $$;

CREATE FUNCTION pg_temp.h(v text) RETURNS text LANGUAGE sql AS
$$ SELECT pg_temp.mac('sql', v) $$;

-- 64 pseudo-random digits for v.
CREATE FUNCTION pg_temp.digits(v text) RETURNS text LANGUAGE sql AS
$$ SELECT translate(pg_temp.h(v), 'abcdef', '012345') $$;

-- u + 11 hex digits @ 8 letters .example (a reserved TLD: nobody gets mail);
-- the same as the file rules' email pseudonym.
CREATE FUNCTION pg_temp.pseudo_email(v text) RETURNS text LANGUAGE sql AS
$$ SELECT 'u' || substr(pg_temp.mac('email-local', lower(v)), 1, 11) || '@'
       || translate(substr(pg_temp.mac('email-domain', lower(substring(v from '[^@]*$'))), 1, 8),
                    '0123456789', 'ghijklmnop')
       || '.example' $$;

-- Same format: every digit replaced, separators kept; a leading +CC is kept.
-- STRICT (as the card one): NULL stays NULL; the loop bound would fail on it.
CREATE FUNCTION pg_temp.pseudo_phone(v text) RETURNS text LANGUAGE plpgsql STRICT AS $$
DECLARE
  d text := pg_temp.digits('phone:' || regexp_replace(v, '\D', '', 'g'));
  cc text := coalesce(substring(v from '^\+\d{1,3}[ .-]'), '');
  rest text := substr(v, length(cc) + 1);
  out text := cc;
  j int := 1;
  c text;
BEGIN
  FOR i IN 1..length(rest) LOOP
    c := substr(rest, i, 1);
    IF c ~ '\d' THEN
      out := out || substr(d, j, 1);
      j := j + 1;
    ELSE
      out := out || c;
    END IF;
  END LOOP;
  RETURN out;
END $$;

-- Same length and separators, same first digit, valid Luhn check digit.
CREATE FUNCTION pg_temp.pseudo_card(v text) RETURNS text LANGUAGE plpgsql STRICT AS $$
DECLARE
  ds text := regexp_replace(v, '\D', '', 'g');
  n int := length(ds);
  payload text := substr(ds, 1, 1) || substr(pg_temp.digits('card:' || ds), 1, n - 2);
  s int := 0;
  x int;
  out text := '';
  j int := 1;
  c text;
BEGIN
  FOR k IN 0..n - 2 LOOP
    x := substr(payload, n - 1 - k, 1)::int;
    IF k % 2 = 0 THEN
      x := x * 2;
      IF x > 9 THEN x := x - 9; END IF;
    END IF;
    s := s + x;
  END LOOP;
  payload := payload || ((10 - s % 10) % 10)::text;
  FOR i IN 1..length(v) LOOP
    c := substr(v, i, 1);
    IF c ~ '\d' THEN
      out := out || substr(payload, j, 1);
      j := j + 1;
    ELSE
      out := out || c;
    END IF;
  END LOOP;
  RETURN out;
END $$;

CREATE FUNCTION pg_temp.pseudo_name(v text) RETURNS text LANGUAGE sql AS
$$ SELECT 'Person ' || upper(substr(pg_temp.h('name:' || v), 1, 8)) $$;

BEGIN;
-- Foreign-key triggers off for this transaction: referencing tables are rewritten
-- with the same deterministic function, so every reference still matches.
SET LOCAL session_replication_role = replica;
UPDATE users SET email = pg_temp.pseudo_email(email),
                 name  = pg_temp.pseudo_name(name),
                 phone = pg_temp.pseudo_phone(phone),
                 card  = pg_temp.pseudo_card(card);
UPDATE orders  SET user_email = pg_temp.pseudo_email(user_email);
UPDATE tickets SET user_email = pg_temp.pseudo_email(user_email);
COMMIT;

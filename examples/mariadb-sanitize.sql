-- Personal data in the example schema, rewritten by mariadb-sanitize-hook.sh.
-- Adapt the UPDATE statements at the end to your schema; the functions are generic.
--
-- Schema this file expects (in the database the hook names, $MARIADB_SANITIZE_DB):
--   users(id, email UNIQUE, name, phone, card)
--   orders(id, user_email REFERENCES users(email) ON UPDATE CASCADE, ...)
--   tickets(id, user_email REFERENCES users(email) ON UPDATE CASCADE, ...)
--
-- The hook runs this on a server started on the clone, then copies the result
-- into a fresh data directory (a logical dump), so the original values left in
-- InnoDB's undo and redo logs, freed pages and binary logs never reach the
-- published clone. Triggers of the clone were dropped before this runs (they
-- come back in the fresh copy): an audit trigger does not copy the original
-- values elsewhere. Foreign keys act as usual (ON UPDATE CASCADE rewrites the
-- referencing rows).
--
-- Pseudonyms are keyed by @cowfs_key (the hook sets it from $COWFS_HOOK_KEY, the
-- pool's pseudonym sub-key): the same value gets the same pseudonym in every
-- table and every clone, so joins keep their row counts. Email pseudonyms are
-- exactly the ones the file rules (and the PostgreSQL example) write:
-- HMAC-SHA256 in plain SQL. The functions live in the database cowfs_sanitize,
-- which the hook creates empty before this file and leaves out of the copy.

DELIMITER ;;

-- The key, zero-padded to SHA-256's 64-byte block, each byte XORed with `b`.
CREATE FUNCTION cowfs_sanitize.pad(b INT) RETURNS VARBINARY(64) DETERMINISTIC
BEGIN
  DECLARE k VARBINARY(64) DEFAULT UNHEX(@cowfs_key);
  DECLARE r VARBINARY(64) DEFAULT '';
  DECLARE i INT DEFAULT 1;
  IF LENGTH(k) > 64 THEN SET k = UNHEX(SHA2(k, 256)); END IF;
  SET k = RPAD(k, 64, 0x00);
  WHILE i <= 64 DO
    SET r = CONCAT(r, CHAR(ASCII(SUBSTRING(k, i, 1)) ^ b USING binary));
    SET i = i + 1;
  END WHILE;
  RETURN r;
END;;

-- hex(HMAC-SHA256(key, label 0x00 value 0x00000000)): the first block of the
-- keyed stream the file rules use for (label, value).
CREATE FUNCTION cowfs_sanitize.mac(label VARCHAR(64), v TEXT CHARACTER SET utf8mb4)
RETURNS CHAR(64) DETERMINISTIC
RETURN LOWER(SHA2(CONCAT(@cowfs_opad,
  UNHEX(SHA2(CONCAT(@cowfs_ipad, CAST(CONVERT(label USING utf8mb4) AS BINARY), 0x00,
                    CAST(v AS BINARY), 0x00000000), 256))), 256));;

CREATE FUNCTION cowfs_sanitize.h(v TEXT CHARACTER SET utf8mb4) RETURNS CHAR(64) DETERMINISTIC
RETURN cowfs_sanitize.mac('sql', v);;

-- 64 pseudo-random digits for v.
CREATE FUNCTION cowfs_sanitize.digits(v TEXT CHARACTER SET utf8mb4) RETURNS CHAR(64) DETERMINISTIC
BEGIN
  DECLARE d CHAR(64) DEFAULT cowfs_sanitize.h(v);
  SET d = REPLACE(REPLACE(REPLACE(d, 'a', '0'), 'b', '1'), 'c', '2');
  RETURN REPLACE(REPLACE(REPLACE(d, 'd', '3'), 'e', '4'), 'f', '5');
END;;

-- u + 11 hex digits @ 8 letters .example (a reserved TLD: nobody gets mail);
-- the same as the file rules' email pseudonym.
CREATE FUNCTION cowfs_sanitize.pseudo_email(v TEXT CHARACTER SET utf8mb4)
RETURNS VARCHAR(64) DETERMINISTIC
BEGIN
  DECLARE d CHAR(8);
  IF v IS NULL THEN RETURN NULL; END IF;
  SET d = SUBSTRING(cowfs_sanitize.mac('email-domain', LOWER(SUBSTRING_INDEX(v, '@', -1))), 1, 8);
  SET d = REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(d, '0', 'g'), '1', 'h'), '2', 'i'), '3', 'j'), '4', 'k');
  SET d = REPLACE(REPLACE(REPLACE(REPLACE(REPLACE(d, '5', 'l'), '6', 'm'), '7', 'n'), '8', 'o'), '9', 'p');
  RETURN CONCAT('u', SUBSTRING(cowfs_sanitize.mac('email-local', LOWER(v)), 1, 11), '@', d, '.example');
END;;

-- v with its digits replaced, in order, by the digits of d; the rest kept.
CREATE FUNCTION cowfs_sanitize.refill(v TEXT CHARACTER SET utf8mb4, d TEXT)
RETURNS TEXT CHARACTER SET utf8mb4 DETERMINISTIC
BEGIN
  DECLARE out_ TEXT CHARACTER SET utf8mb4 DEFAULT '';
  DECLARE c VARCHAR(1) CHARACTER SET utf8mb4;  -- not CHAR: a space would be trimmed
  DECLARE i INT DEFAULT 1;
  DECLARE j INT DEFAULT 1;
  WHILE i <= CHAR_LENGTH(v) DO
    SET c = SUBSTRING(v, i, 1);
    IF c BETWEEN '0' AND '9' THEN
      SET out_ = CONCAT(out_, SUBSTRING(d, j, 1));
      SET j = j + 1;
    ELSE
      SET out_ = CONCAT(out_, c);
    END IF;
    SET i = i + 1;
  END WHILE;
  RETURN out_;
END;;

-- Same format: every digit replaced, separators kept; a leading +CC is kept.
CREATE FUNCTION cowfs_sanitize.pseudo_phone(v TEXT CHARACTER SET utf8mb4)
RETURNS TEXT CHARACTER SET utf8mb4 DETERMINISTIC
BEGIN
  DECLARE cc TEXT CHARACTER SET utf8mb4;
  IF v IS NULL THEN RETURN NULL; END IF;
  SET cc = COALESCE(REGEXP_SUBSTR(v, '^\\+[0-9]{1,3}[ .-]'), '');
  RETURN CONCAT(cc, cowfs_sanitize.refill(SUBSTRING(v, CHAR_LENGTH(cc) + 1),
    cowfs_sanitize.digits(CONCAT('phone:', REGEXP_REPLACE(v, '[^0-9]', '')))));
END;;

-- Same length and separators, same first digit, valid Luhn check digit.
CREATE FUNCTION cowfs_sanitize.pseudo_card(v TEXT CHARACTER SET utf8mb4)
RETURNS TEXT CHARACTER SET utf8mb4 DETERMINISTIC
BEGIN
  DECLARE ds TEXT;
  DECLARE n INT;
  DECLARE payload TEXT;
  DECLARE s INT DEFAULT 0;
  DECLARE x INT;
  DECLARE k INT DEFAULT 0;
  IF v IS NULL THEN RETURN NULL; END IF;
  SET ds = REGEXP_REPLACE(v, '[^0-9]', '');
  SET n = CHAR_LENGTH(ds);
  SET payload = CONCAT(SUBSTRING(ds, 1, 1),
                       SUBSTRING(cowfs_sanitize.digits(CONCAT('card:', ds)), 1, n - 2));
  WHILE k <= n - 2 DO
    SET x = CAST(SUBSTRING(payload, n - 1 - k, 1) AS UNSIGNED);
    IF k % 2 = 0 THEN
      SET x = x * 2;
      IF x > 9 THEN SET x = x - 9; END IF;
    END IF;
    SET s = s + x;
    SET k = k + 1;
  END WHILE;
  RETURN cowfs_sanitize.refill(v, CONCAT(payload, (10 - s % 10) % 10));
END;;

CREATE FUNCTION cowfs_sanitize.pseudo_name(v TEXT CHARACTER SET utf8mb4)
RETURNS VARCHAR(16) DETERMINISTIC
RETURN IF(v IS NULL, NULL, CONCAT('Person ', UPPER(SUBSTRING(cowfs_sanitize.h(CONCAT('name:', v)), 1, 8))));;

DELIMITER ;

-- HMAC-SHA256 pads of the key, computed once per session.
SET @cowfs_ipad = cowfs_sanitize.pad(54), @cowfs_opad = cowfs_sanitize.pad(92);

START TRANSACTION;
-- ON UPDATE CASCADE carries the new emails into orders and tickets.
UPDATE users SET email = cowfs_sanitize.pseudo_email(email),
                 name  = cowfs_sanitize.pseudo_name(name),
                 phone = cowfs_sanitize.pseudo_phone(phone),
                 card  = cowfs_sanitize.pseudo_card(card);
COMMIT;

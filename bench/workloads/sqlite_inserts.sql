-- sqlite3 bulk inserts: 400k rows in one statement, an index, an aggregate. Allocation-heavy.
PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;
CREATE TABLE t(a INTEGER PRIMARY KEY, b TEXT, c REAL);
WITH RECURSIVE s(i) AS (SELECT 1 UNION ALL SELECT i+1 FROM s WHERE i<400000) INSERT INTO t SELECT i, hex(randomblob(16)), i*0.5 FROM s;
CREATE INDEX tb ON t(b);
SELECT count(*), sum(length(b)) FROM t GROUP BY a % 7 ORDER BY 1 LIMIT 1;

#!/bin/bash
# Runs once, when the db volume is first initialised (docker-entrypoint-initdb.d).
# The mysql image creates $MYSQL_USER; DataJoint creates one database per schema, so the user needs
# rights on every database with the project's prefix, and PROCESS to see other workers'
# connections (used to find reservations left by dead workers).
set -euo pipefail
prefix="${SYSID_SCHEMA_PREFIX:-sysid_}"
# `_` is a wildcard in GRANT database patterns: escape it so the grant covers this prefix only
pattern="${prefix//_/\\_}%"
mysql --protocol=socket -uroot -p"${MYSQL_ROOT_PASSWORD}" <<SQL
GRANT ALL PRIVILEGES ON \`${pattern}\`.* TO '${MYSQL_USER}'@'%';
GRANT PROCESS ON *.* TO '${MYSQL_USER}'@'%';
FLUSH PRIVILEGES;
SQL

"""The one DataJoint schema object that every table of the pipeline is bound to.

It is created unbound: importing the table modules touches no database. ``schemas.activate()``
binds it to a database schema named ``<prefix>pipeline`` on a chosen connection.
"""

from __future__ import annotations

import datajoint as dj

#: all pipeline tables; activated by :func:`schemas.connection.activate`
schema = dj.Schema()

#: name of the database schema, without the prefix
SCHEMA_SUFFIX = "pipeline"

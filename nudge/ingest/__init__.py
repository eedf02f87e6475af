"""Ingestion of the landing folder into the warehouse's `raw` schema.

One entry point, `ingest_pending(wh, landing_dir, run_id=None, progress=None) -> IngestReport`,
takes every dump file not yet ingested in its current version and chooses how each is read:

    read path (module.function)           when it applies           why
    ------------------------------------  ------------------------  -----------------------------
    read_together.                        DuckDB warehouse; two or  one scan and one transaction
      read_new_event_files_together       more new event files in   for many files: per-file
                                          a row                     statements and commits cost
                                                                    more than the parsing
    read_clean.read_clean_file            every other file (all on  `read_json`, one parse per
                                          Postgres), tried first    event; kept only when
                                                                    provably what reading line
                                                                    by line gives
    read_by_line.read_array_by_element    a JSON-array file the     numbers each element, keeps
                                          clean read refused        the text of the bad ones
    read_by_line.read_line_by_line        any other file the clean  every line kept with its
                                          read refused (a bad or    number; bad lines go to
                                          blank line, an event      raw.rejected with text and
                                          without transaction_id)   reason
    read_by_line.read_cut_short_gzip      a gzip file whose stream  its complete lines load; the
                                          breaks off                line cut short is rejected
    Loader.record_unreadable              nothing in the file can   one rejected entry, so the
                                          be read                   broken-export guard sees it

On a Spark warehouse none of these runs: `spark_reader` reads the files with Spark itself (its
text reader and JSON parser, an explicit schema, the corrupt-record column), in batches, judged
by `spark_sql` with the reasons above, and appends to Parquet tables (raw.events partitioned by
`dt`); JSON arrays and gzip files cut short are decoded by Python and sent to Spark as rows.

A file read together that fails its verification is read on its own, from the top of the
table; every path fills the same staging table with the same judgement (`staging`), and
`loading` moves it into `raw` in one transaction with the file's `raw.ingested_files` row.
`file_scan` hashes and counts the lines of each file ahead of its read; `landing` lists the
files; the DDL of the raw tables is in `schema`.
"""

from nudge.ingest.report import FileResult, IngestReport, KindTotals
from nudge.ingest.run import ingest_pending, pending_event_dts

__all__ = ["FileResult", "IngestReport", "KindTotals", "ingest_pending", "pending_event_dts"]

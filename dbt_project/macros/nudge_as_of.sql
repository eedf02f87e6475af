{#
    The evaluation instant `end` (contract, "The evaluation instant").

    The var `nudge_as_of` is ISO 8601; an offset is converted to UTC, none means UTC. A bare date
    means the end of that UTC day (the next midnight), as `nudge run --as-of DATE` does. Absent or
    empty: now, taken as the dbt invocation's start (UTC), so that every model of one run agrees.

    The instant is rendered as a timestamp literal (UTC, no zone). Converting in Jinja, not in SQL,
    keeps the session time zone out of it (a Postgres timestamptz -> timestamp cast would use it)
    and lets both engines fold every window bound to a constant.
#}

{% macro nudge_as_of_datetime() -%}
    {{ return(nudge_parse_as_of(var('nudge_as_of', none))) }}
{%- endmacro %}


{% macro nudge_parse_as_of(raw) -%}
    {#- `raw` (the var's value: a string, or a date/datetime when YAML parsed it) as a naive UTC
        datetime. -#}
    {%- set text = '' if raw is none else (raw | string | trim) -%}
    {%- set dt = modules.datetime -%}
    {%- if text == '' -%}
        {%- set end = run_started_at.astimezone(modules.pytz.utc).replace(tzinfo=none) -%}
    {%- elif modules.re.match('^[0-9]{4}-[0-9]{2}-[0-9]{2}$', text) -%}
        {%- set end = dt.datetime.strptime(text, '%Y-%m-%d') + dt.timedelta(days=1) -%}
    {%- elif modules.re.match('^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.][0-9]+)?)?(Z|z|[+-][0-9]{2}(:?[0-9]{2})?)?$', text) -%}
        {%- set parsed = dt.datetime.fromisoformat(text[:-1] ~ '+00:00' if text[-1] in 'Zz' else text) -%}
        {%- if parsed.tzinfo is not none -%}
            {%- set parsed = parsed.astimezone(modules.pytz.utc).replace(tzinfo=none) -%}
        {%- endif -%}
        {%- set end = parsed -%}
    {%- else -%}
        {{ exceptions.raise_compiler_error(
            "dbt var nudge_as_of=" ~ text ~ ": use an ISO 8601 date (2026-01-31) or datetime "
            ~ "(2026-01-31T12:00:00Z)") }}
    {%- endif -%}
    {{ return(end) }}
{%- endmacro %}


{% macro nudge_as_of() -%}
    {{ nudge_timestamp_literal(nudge_as_of_datetime()) }}
{%- endmacro %}


{% macro nudge_timestamp_literal(value) -%}
    {#- A Python datetime (naive UTC) as a SQL timestamp literal. -#}
    {{ dbt.cast("'" ~ value.isoformat(sep=' ') ~ "'", dbt.type_timestamp()) | trim }}
{%- endmacro %}


{#
    A window of `days` days ending at `end`: `[end - days, end)`, split into the whole UTC days it
    covers (read from the daily rollups) and the partial days at its two edges (read from events):
    start <= full_start <= full_end <= end; the edges are [start, full_start) and [full_end, end),
    both empty when `end` is a midnight. Bounds are computed here, from the same instant
    nudge_as_of() renders, and rendered as literals: constants that both engines use to prune,
    and readable in compiled SQL.
#}
{% macro nudge_window(days) -%}
    {%- set end = nudge_as_of_datetime() -%}
    {{ return(nudge_window_between(end - modules.datetime.timedelta(days=days), end)) }}
{%- endmacro %}


{% macro nudge_month_window() -%}
    {#- The calendar month (UTC) of the evaluated instant so far: `[first of the month, end)`.
        The month is that of the last instant before `end`, so the evaluation at the end of
        January 31 (end = February 1, 00:00) covers January. -#}
    {%- set dt = modules.datetime -%}
    {%- set end = nudge_as_of_datetime() -%}
    {%- set last = end - dt.timedelta(microseconds=1) -%}
    {{ return(nudge_window_between(dt.datetime(last.year, last.month, 1), end)) }}
{%- endmacro %}


{% macro nudge_window_between(start, end) -%}
    {#- The window `[start, end)` (naive UTC datetimes), in nudge_window's form. -#}
    {%- set dt = modules.datetime -%}
    {%- set start_midnight = dt.datetime(start.year, start.month, start.day) -%}
    {%- set full_start = start if start == start_midnight else start_midnight + dt.timedelta(days=1) -%}
    {%- set full_end = dt.datetime(end.year, end.month, end.day) -%}
    {%- if full_start > full_end -%}
        {#- Less than a day, inside one day: no whole day, one edge [start, end). -#}
        {%- set full_start = end -%}
        {%- set full_end = end -%}
    {%- endif -%}
    {{ return({
        'start': nudge_timestamp_literal(start),
        'full_start': nudge_timestamp_literal(full_start),
        'full_end': nudge_timestamp_literal(full_end),
        'end': nudge_timestamp_literal(end),
        'full_start_date': dbt.cast("'" ~ full_start.date().isoformat() ~ "'", 'date') | trim,
        'full_end_date': dbt.cast("'" ~ full_end.date().isoformat() ~ "'", 'date') | trim,
        'has_start_edge': start < full_start,
        'has_end_edge': full_end < end,
    }) }}
{%- endmacro %}


{% macro nudge_in_window_edges(column, window) -%}
    {#- True for times in the window's partial edge days; a constant false when both are empty,
        so that no engine scans the events for nothing. -#}
    {%- set parts = [] -%}
    {%- if window.has_start_edge -%}
        {%- do parts.append('(' ~ column ~ ' >= ' ~ window.start ~ ' and ' ~ column ~ ' < ' ~ window.full_start ~ ')') -%}
    {%- endif -%}
    {%- if window.has_end_edge -%}
        {%- do parts.append('(' ~ column ~ ' >= ' ~ window.full_end ~ ' and ' ~ column ~ ' < ' ~ window.end ~ ')') -%}
    {%- endif -%}
    {%- if parts -%}
        ({{ parts | join(' or ') }})
    {%- else -%}
        (1 = 0)
    {%- endif -%}
{%- endmacro %}


{% macro nudge_in_window_full_days(date_column, window) -%}
    ({{ date_column }} >= {{ window.full_start_date }} and {{ date_column }} < {{ window.full_end_date }})
{%- endmacro %}

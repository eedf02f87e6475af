{#
    Endpoint normalization (documented in models/intermediate/_int__models.yml, unit-tested there).

    `endpoint` = the request path of `uri`, without scheme, host, query string or fragment, with
    repeated slashes collapsed, no trailing slash (`/` for the root), and every path segment that
    looks like an id replaced by `{id}`. A segment is an id when it is
      1. all digits:                           /v1/widgets/105        -> /v1/widgets/{id}
      2. a UUID (8-4-4-4-12 hex, any case):   /v1/jobs/0b6f...-...   -> /v1/jobs/{id}
      3. 16+ characters containing a digit:   hashes, ObjectIds, ULIDs, base62 tokens
      4. a prefixed id, letters `_` then a run with a digit:  ord_2_0, cus_N1ffr -> {id}
    Short tokens with digits (v1, v2, oauth2, s3, sha256, 2fa) and words without digits stay.
    Regexes stay in the common subset of DuckDB (RE2), Postgres (ARE) and Spark (Java).
#}

{% macro nudge_uri_path(uri) -%}
    {#- Cheap first cut, query string and fragment dropped; used to pre-aggregate before folding. -#}
    split_part(split_part({{ uri }}, '?', 1), '#', 1)
{%- endmacro %}


{% macro nudge_endpoint(uri) -%}
    {#- Scheme and host dropped by regex; slashes are handled by the split: empty segments (from
        leading, trailing or repeated slashes) are dropped, the rest joined behind one '/'. -#}
    {%- set path -%}
        regexp_replace({{ nudge_uri_path(uri) }}, '^[A-Za-z][A-Za-z0-9+.-]*://[^/]*', '')
    {%- endset -%}
    case when {{ uri }} is null then null
         else '/' || {{ adapter.dispatch('nudge_fold_id_segments', 'nudge')(path) }} end
{%- endmacro %}


{% macro nudge_is_id_segment(seg) -%}
    {#- Rules 1, 2 and 4 in one anchored alternation (one regex pass, not three), then rule 3. -#}
    (
        {{ nudge_regex_matches(seg, '^([0-9]+|[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}|[A-Za-z]+_[A-Za-z0-9_]*[0-9][A-Za-z0-9_]*)$') }}
        or (length({{ seg }}) >= 16 and {{ nudge_regex_matches(seg, '[0-9]') }})
    )
{%- endmacro %}


{% macro default__nudge_fold_id_segments(path) -%}
    {#- The non-empty segments of `path`, ids folded, joined by '/' ('' when none). -#}
    array_to_string(
        [case when {{ nudge_is_id_segment('seg') }} then '{id}' else seg end
         for seg in string_split({{ path }}, '/') if seg <> ''],
        '/')
{%- endmacro %}

{% macro postgres__nudge_fold_id_segments(path) -%}
    coalesce(
        (select string_agg(case when {{ nudge_is_id_segment('seg') }} then '{id}' else seg end, '/'
                           order by seg_number)
         from unnest(string_to_array({{ path }}, '/')) with ordinality as segs (seg, seg_number)
         where seg <> ''),
        '')
{%- endmacro %}

{% macro spark__nudge_fold_id_segments(path) -%}
    array_join(
        transform(
            filter(split({{ path }}, '/'), seg -> seg <> ''),
            seg -> case when {{ nudge_is_id_segment('seg') }} then '{id}' else seg end),
        '/')
{%- endmacro %}

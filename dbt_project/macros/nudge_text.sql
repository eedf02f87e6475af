{#
    Text comparison that does not depend on the database's collation, so that ordering, min and
    max give the same answer on DuckDB (byte order) and on Postgres (whatever its locale).
#}

{% macro nudge_bytewise(expr) -%}
    {{ return(adapter.dispatch('nudge_bytewise', 'nudge')(expr)) }}
{%- endmacro %}

{% macro default__nudge_bytewise(expr) -%}
    {{ expr }}
{%- endmacro %}

{% macro postgres__nudge_bytewise(expr) -%}
    ({{ expr }} collate "C")
{%- endmacro %}


{% macro nudge_regex_matches(expr, pattern) -%}
    {#- True when `pattern` (the RE2 / Postgres ARE common subset) matches somewhere in `expr`. -#}
    {{ return(adapter.dispatch('nudge_regex_matches', 'nudge')(expr, pattern)) }}
{%- endmacro %}

{% macro default__nudge_regex_matches(expr, pattern) -%}
    regexp_matches({{ expr }}, '{{ pattern }}')
{%- endmacro %}

{% macro postgres__nudge_regex_matches(expr, pattern) -%}
    ({{ expr }} ~ '{{ pattern }}')
{%- endmacro %}

{% macro spark__nudge_regex_matches(expr, pattern) -%}
    ({{ expr }} rlike '{{ pattern }}')
{%- endmacro %}

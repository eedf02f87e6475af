{#
    dbt-spark's versions of two dbt macros, fixed for Nudge (found first through the `dispatch`
    search order in dbt_project.yml; the other engines keep dbt's own).
#}

{#- dbt-spark drops the order_by_clause (with a warning); Spark 4 has listagg ... within group. -#}
{% macro spark__listagg(measure, delimiter_text, order_by_clause, limit_num) -%}
    {%- if limit_num -%}
        {{ exceptions.raise_compiler_error("listagg on Spark: limit_num is not supported") }}
    {%- endif -%}
    listagg({{ measure }}, {{ delimiter_text }})
    {%- if order_by_clause %} within group ({{ order_by_clause }}){% endif %}
{%- endmacro %}

{#- Spark reads backslash escapes in string literals: dbt-spark escapes only quotes, so a unit
    test's fixture value with a backslash reached Spark without it. -#}
{% macro spark__escape_single_quotes(expression) -%}
    {{ expression | replace("\\", "\\\\") | replace("'", "\\'") }}
{%- endmacro %}

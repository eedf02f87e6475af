{#
    Schemas are named exactly as configured (`analytics`), not dbt's default
    `<target schema>_<custom schema>` (which would give `analytics_analytics` or `main_analytics`).
#}
{% macro generate_schema_name(custom_schema_name, node) -%}
    {%- if custom_schema_name is none -%}
        {{ target.schema | trim }}
    {%- else -%}
        {{ custom_schema_name | trim }}
    {%- endif -%}
{%- endmacro %}

{#
    `nudge diff-cohort MODEL` builds the edited model beside the live one: with the var
    nudge_shadow_model set to a model's name, that model (and only it; its refs resolve as usual)
    is written to `<model>__shadow`. Without the var, dbt's default naming.
#}
{% macro generate_alias_name(custom_alias_name=none, node=none) -%}
    {%- set name = default__generate_alias_name(custom_alias_name, node) | trim -%}
    {%- set shadow = var('nudge_shadow_model', '') -%}
    {%- if shadow and node is not none and node.name == shadow -%}
        {{ name ~ '__shadow' }}
    {%- else -%}
        {{ name }}
    {%- endif -%}
{%- endmacro %}

{#
    JSON on both engines, kept as text.
#}

{% macro nudge_json_get(column, key) -%}
    {#- The top-level `key` of the JSON text in `column`, as text (null when absent).
        Example: {{ nudge_json_get('metadata', 'title') }} on dim_users. -#}
    {%- if not modules.re.match('^[A-Za-z0-9_ -]+$', key) -%}
        {{ exceptions.raise_compiler_error("nudge_json_get: key " ~ key ~ " must be letters, digits, _, - or space") }}
    {%- endif -%}
    {{ return(adapter.dispatch('nudge_json_get', 'nudge')(column, key)) }}
{%- endmacro %}

{% macro default__nudge_json_get(column, key) -%}
    json_extract_string({{ column }}, '$."{{ key }}"')
{%- endmacro %}

{% macro postgres__nudge_json_get(column, key) -%}
    (cast({{ column }} as json) ->> '{{ key }}')
{%- endmacro %}

{% macro spark__nudge_json_get(column, key) -%}
    get_json_object({{ column }}, '$[\'{{ key }}\']')
{%- endmacro %}


{% macro nudge_json_string(expr) -%}
    {#- `expr` as a JSON string literal (null -> null): backslash, quote and the usual control
        characters escaped, any other control character turned into a space, so the result is
        valid JSON whatever the input (hostile URIs included). -#}
    case when {{ expr }} is null then 'null' else
        '"' || translate(
            replace(replace(replace(replace(replace(
                {{ expr }}, {{ nudge_sql_string('\\') }}, {{ nudge_sql_string('\\\\') }}),
                '"', {{ nudge_sql_string('\\"') }}), chr(10), {{ nudge_sql_string('\\n') }}),
                chr(13), {{ nudge_sql_string('\\r') }}), chr(9), {{ nudge_sql_string('\\t') }}),
            {{ nudge_control_chars() }},
            repeat(' ', 29)
        ) || '"'
    end
{%- endmacro %}

{% macro nudge_control_chars() -%}
    {#- chr(1)..chr(31) except tab, newline, carriage return: 29 characters. -#}
    {%- set codes = [] -%}
    {%- for c in range(1, 32) if c not in (9, 10, 13) -%}
        {%- do codes.append('chr(' ~ c ~ ')') -%}
    {%- endfor -%}
    ({{ codes | join(' || ') }})
{%- endmacro %}

{#
    Vars as validated SQL fragments: a bad --vars value fails compilation with a message naming
    the var, instead of rendering broken or injectable SQL.
#}

{% macro nudge_int_var(name, minimum=0) -%}
    {%- set value = var(name) -%}
    {%- if value is string and modules.re.match('^-?[0-9]+$', value | trim) -%}
        {%- set value = value | trim | int -%}
    {%- endif -%}
    {%- if value is not number or value is boolean or value != value | int or value < minimum -%}
        {{ exceptions.raise_compiler_error(
            "dbt var " ~ name ~ "=" ~ (value | string) ~ ": expected an integer >= " ~ minimum) }}
    {%- endif -%}
    {{ return(value | int) }}
{%- endmacro %}


{% macro nudge_status_list(name) -%}
    {#- A var holding a list of HTTP status codes, rendered as `400, 404, 405`. -#}
    {%- set value = var(name) -%}
    {%- if value is number -%}{%- set value = [value] -%}{%- endif -%}
    {%- if value is string or value is mapping or value is not iterable or value | length == 0 -%}
        {{ exceptions.raise_compiler_error(
            "dbt var " ~ name ~ "=" ~ (value | string) ~ ": expected a non-empty list of HTTP status codes, e.g. [400, 404, 405]") }}
    {%- endif -%}
    {%- set codes = [] -%}
    {%- for code in value -%}
        {%- if code is boolean or code is not number or code != code | int or code < 100 or code > 599 -%}
            {{ exceptions.raise_compiler_error(
                "dbt var " ~ name ~ ": " ~ (code | string) ~ " is not an HTTP status code (100-599)") }}
        {%- endif -%}
        {%- do codes.append(code | int | string) -%}
    {%- endfor -%}
    {{ return(codes | join(', ')) }}
{%- endmacro %}

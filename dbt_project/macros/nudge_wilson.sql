{#
    Bounds of the 95% Wilson score interval of a proportion `p` over `n` trials (null when n is
    0): (p + z²/2n -+ z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n). Exactly 0 (low) at p = 0 and 1
    (high) at p = 1, where the formula would leave a rounding error. Only arithmetic, sqrt and
    case: the same on every engine, and the same operations in the same order as
    email_jobs/report.py's `wilson`, so that both give the same doubles.
#}

{% macro nudge_wilson_low(p, n) -%}
    {{ nudge_wilson_bound(p, n, '-') }}
{%- endmacro %}

{% macro nudge_wilson_high(p, n) -%}
    {{ nudge_wilson_bound(p, n, '+') }}
{%- endmacro %}

{% macro nudge_wilson_bound(p, n, sign) -%}
    {%- set z = 'cast(1.959963984540054 as ' ~ nudge_type_double() ~ ')' -%}
    {%- set n_d = 'cast(' ~ n ~ ' as ' ~ nudge_type_double() ~ ')' -%}
    case
        when {{ n }} = 0 then null
        when {{ p }} = {{ 0 if sign == '-' else 1 }} then cast({{ 0 if sign == '-' else 1 }} as {{ nudge_type_double() }})
        else (
            {{ p }} + {{ z }} * {{ z }} / (2 * {{ n_d }})
            {{ sign }} {{ z }} * sqrt(
                {{ p }} * (1 - {{ p }}) / {{ n_d }} + {{ z }} * {{ z }} / (4 * {{ n_d }} * {{ n_d }})
            )
        ) / (1 + {{ z }} * {{ z }} / {{ n_d }})
    end
{%- endmacro %}

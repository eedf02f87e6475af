{#
    Generic test: no two rows share the same values of `combination_of_columns` (nulls compare
    equal, as in GROUP BY). The grain test for models keyed by several columns.
#}
{% test unique_combination_of_columns(model, combination_of_columns) %}

select
    {{ combination_of_columns | join(', ') }},
    count(*) as duplicates
from {{ model }}
group by {{ combination_of_columns | join(', ') }}
having count(*) > 1

{% endtest %}

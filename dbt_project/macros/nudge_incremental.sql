{#
    Incremental rollups by UTC day. A run recomputes every day touched by events ingested since the
    rollup's watermark (its newest `last_ingested_at`), whatever the day: a late event re-touches
    its own day. The model uses `incremental_strategy='delete+insert'` with the day as
    `unique_key`, so each touched day is replaced whole.
#}

{% macro nudge_touched_days(events_relation, time_column, watermark_column='last_ingested_at') -%}
    select distinct {{ dbt.cast(time_column, 'date') }}
    from {{ events_relation }}
    where ingested_at > (
        select coalesce(max({{ watermark_column }}), {{ dbt.cast("'1900-01-01'", dbt.type_timestamp()) }})
        from {{ this }}
    )
{%- endmacro %}

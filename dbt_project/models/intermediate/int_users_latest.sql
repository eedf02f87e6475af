-- One row per user: the newest profile version (by modified_time) wins; the sign-up time is
-- metadata.created of the newest version that has one, else the earliest modified_time seen.

with

versions as (

    select * from {{ ref('stg_moesif__users') }}

),

ranked as (

    select
        *,
        row_number() over (
            partition by user_id
            order by
                modified_at desc nulls last,
                ingested_at desc,
                {{ nudge_bytewise('source_file') }} desc,
                source_line desc
        ) as recency_rank,
        row_number() over (
            partition by user_id
            order by
                case when created_at is null then 1 else 0 end,
                modified_at desc nulls last,
                ingested_at desc,
                {{ nudge_bytewise('source_file') }} desc,
                source_line desc
        ) as created_rank

    from versions

),

history as (

    select
        user_id,
        min(modified_at) as first_modified_at,
        count(*) as profile_versions

    from versions
    group by user_id

),

newest as (

    select * from ranked where recency_rank = 1

),

newest_created as (

    select user_id, created_at from ranked where created_rank = 1 and created_at is not null

),

final as (

    select
        newest.user_id,
        nullif(trim(newest.company_id), '') as company_id,
        nullif(trim(newest.email), '') as email,
        newest.first_name,
        newest.last_name,
        coalesce(newest_created.created_at, history.first_modified_at) as signup_at,
        case
            when newest_created.created_at is not null then 'metadata.created'
            when history.first_modified_at is not null then 'first_modified_time'
        end as signup_source,
        newest.modified_at as profile_modified_at,
        history.profile_versions,
        newest.metadata

    from newest
    inner join history on history.user_id = newest.user_id
    left join newest_created on newest_created.user_id = newest.user_id

)

select * from final

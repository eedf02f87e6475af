-- A campaign goal (contract, "Holdouts and goals"): one row per user with a profile, at the
-- first call answered 2xx at or after sign-up. `converted_at` is that call's time (UTC).

with

users as (

    select user_id, signup_at from {{ ref('dim_users') }}

),

successes as (

    select user_id, requested_at
    from {{ ref('stg_moesif__events') }}
    where user_id is not null and status_code >= 200 and status_code < 300

),

first_success as (

    select
        successes.user_id as entity_id,
        min(successes.requested_at) as converted_at

    from successes
    inner join users on users.user_id = successes.user_id
    where users.signup_at is null or successes.requested_at >= users.signup_at
    group by successes.user_id

)

select * from first_success

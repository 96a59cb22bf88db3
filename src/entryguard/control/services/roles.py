"""Roles and their links; every edit re-evaluates the affected users' live sessions."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from entryguard.control.db.models import Resource, Role, RoleResource, RoleUser, User
from entryguard.control.services.grants import reconcile_users
from entryguard.control.services.journal import audit
from entryguard.control.services.validation import check_name
from entryguard.control.services.views import View
from entryguard.errors import Conflict, NotFound


class RoleView(View):
    id: int
    name: str
    max_duration_seconds: int
    resources: list[str]
    users: list[str]


async def get_role(s: AsyncSession, name: str) -> Role:
    r = (await s.execute(select(Role).where(Role.name == name))).scalar_one_or_none()
    if r is None:
        raise NotFound(f"no role {name!r}", code="role_not_found")
    return r


async def role_view(s: AsyncSession, role: Role) -> RoleView:
    res = (
        (
            await s.execute(
                select(Resource.name)
                .join(RoleResource, RoleResource.resource_id == Resource.id)
                .where(RoleResource.role_id == role.id)
                .order_by(Resource.name)
            )
        )
        .scalars()
        .all()
    )
    users = (
        (
            await s.execute(
                select(User.email)
                .join(RoleUser, RoleUser.user_id == User.id)
                .where(RoleUser.role_id == role.id)
                .order_by(User.email)
            )
        )
        .scalars()
        .all()
    )
    return RoleView(
        id=role.id,
        name=role.name,
        max_duration_seconds=role.max_duration_seconds,
        resources=list(res),
        users=list(users),
    )


async def list_roles(s: AsyncSession) -> list[RoleView]:
    rs = (await s.execute(select(Role).order_by(Role.name))).scalars()
    return [await role_view(s, r) for r in list(rs)]


async def create_role(
    s: AsyncSession, org_id: int, name: str, max_seconds: int, actor: str
) -> Role:
    check_name(name, "role name")
    if (await s.execute(select(Role.id).where(Role.name == name))).first():
        raise Conflict(f"a role {name!r} already exists", code="role_exists")
    r = Role(org_id=org_id, name=name, max_duration_seconds=max_seconds)
    s.add(r)
    await s.flush()
    await audit(
        s, actor, "role.create", name, details={"max_duration_seconds": max_seconds}, org_id=org_id
    )
    return r


async def _role_user_ids(s: AsyncSession, role_id: int) -> list[int]:
    return list(
        (await s.execute(select(RoleUser.user_id).where(RoleUser.role_id == role_id))).scalars()
    )


async def add_resource(s: AsyncSession, role: Role, resource: Resource, actor: str) -> None:
    key = {"role_id": role.id, "resource_id": resource.id}
    if await s.get(RoleResource, key) is None:
        s.add(RoleResource(**key))
        await s.flush()
        await reconcile_users(s, await _role_user_ids(s, role.id), "role_changed")
    await audit(
        s,
        actor,
        "role.add_resource",
        role.name,
        details={"resource": resource.name},
        org_id=role.org_id,
    )


async def remove_resource(s: AsyncSession, role: Role, resource: Resource, actor: str) -> None:
    link = await s.get(RoleResource, {"role_id": role.id, "resource_id": resource.id})
    if link is None:
        raise NotFound(
            f"role {role.name!r} does not have resource {resource.name!r}", code="not_linked"
        )
    await s.delete(link)
    await s.flush()
    await reconcile_users(s, await _role_user_ids(s, role.id), "role_changed")
    await audit(
        s,
        actor,
        "role.remove_resource",
        role.name,
        details={"resource": resource.name},
        org_id=role.org_id,
    )


async def add_user(s: AsyncSession, role: Role, user: User, actor: str) -> None:
    key = {"role_id": role.id, "user_id": user.id}
    if await s.get(RoleUser, key) is None:
        s.add(RoleUser(**key))
        await s.flush()
        await reconcile_users(s, [user.id], "role_changed")
    await audit(
        s, actor, "role.add_user", role.name, details={"user": user.email}, org_id=role.org_id
    )


async def remove_user(s: AsyncSession, role: Role, user: User, actor: str) -> None:
    link = await s.get(RoleUser, {"role_id": role.id, "user_id": user.id})
    if link is None:
        raise NotFound(f"{user.email} is not in role {role.name!r}", code="not_linked")
    await s.delete(link)
    await s.flush()
    await reconcile_users(s, [user.id], "role_changed")
    await audit(
        s, actor, "role.remove_user", role.name, details={"user": user.email}, org_id=role.org_id
    )

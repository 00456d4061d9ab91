"""The Glacier2 router and the blitz services, as the generated servant classes' subclasses.

Behaviour follows OMERO.blitz (SessionManagerI, PermissionsVerifierI, ServiceFactoryI, SessionI,
SessionBean):

- login through the router creates a session, or joins one when name and password are both
  its UUID, counting the reference;
- Glacier2's destroySession (or a lost client connection) detaches, and closes the session if
  that was its last reference, unless the client asked detachOnDestroy (blitz closes by default);
- ISession.closeSession drops one reference and removes the session at zero;
- every call made inside a session slides its idle timer; the first call in an expired session
  gets SessionTimeoutException, and the session's objects are gone afterwards
  (ObjectNotExistException).
"""

from __future__ import annotations

import uuid as uuidlib
from typing import Any

import Glacier2
import Ice
import omero
import omero.all  # registers every generated class
import omero.constants
from omero.rtypes import unwrap

from . import objects
from .model import Directory, Session, SessionExpired, SessionGone, User
from .queries import UnsupportedQuery, bound_parameters, run_query
from .routing import Factory, Registry, amd

CLIENTUUID = omero.constants.CLIENTUUID  # "omero.client.uuid"


def _session_not_exist() -> Ice.UserException:
    # Glacier2.py replaces the Slice SessionNotExistException with a plain local class; the
    # Slice one (whose type is registered with IcePy) is the class the type id resolves to.
    for klass in Ice.UserException.__subclasses__():
        if getattr(klass, "_ice_name", "") == "Glacier2::SessionNotExistException":
            return klass()
    raise RuntimeError("Glacier2 Slice definitions not loaded")


def _wrapped(kind: str, reason: str) -> omero.WrappedCreateSessionException:
    return omero.WrappedCreateSessionException(reason=reason, concurrency=False, backOff=-1, type=kind)


class _SessionBound:
    """What every in-session servant needs: its factory, the live session, the call's group."""

    def __init__(self, registry: Registry, factory: Factory) -> None:
        self._registry = registry
        self._factory = factory

    @property
    def _directory(self) -> Directory:
        return self._registry.directory

    def _session(self, current: Any) -> Session:
        if not self._registry.factory_alive(self._factory):
            raise Ice.ObjectNotExistException(current.id, current.facet, current.operation)
        try:
            return self._registry.table.lookup(self._factory.session_uuid, touch=True)
        except SessionExpired:
            raise omero.SessionTimeoutException(message="Session timed out") from None
        except SessionGone:
            raise omero.RemovedSessionException(message="Session removed") from None

    def _group(self, session: Session, current: Any) -> int:
        """The group a call runs in: a numeric ``omero.group`` context, else the session's."""
        gid = session.group_id
        raw = current.ctx.get("omero.group")
        if raw is not None:
            try:
                requested = int(raw)
            except ValueError:
                # OMERO ignores a non-numeric value; the gateway leaves its login group
                # *name* in the implicit context, so this is the common case.
                requested = None
            if requested is not None and requested < 0:
                return requested  # -1: the all-groups context
            if requested is not None:
                if requested not in self._directory.groups:
                    raise omero.ValidationException(message=f"No such group: {requested}")
                gid = requested
        user = session.user
        if gid not in user.group_ids and not user.is_admin:
            raise omero.SecurityViolation(message=f"User {user.id} is not a member of group {gid}")
        return gid

    def _enter(self, current: Any) -> tuple[Session, int]:
        session = self._session(current)
        return session, self._group(session, current)


@amd
class RouterI(Glacier2.Router):  # type: ignore[misc]
    """Glacier2 router: one session per client connection, created by blitz login rules."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def getClientProxy(self, current: Any = None) -> Any:
        return None  # as Glacier2: clients send routed requests to the router's own endpoints

    def getServerProxy(self, current: Any = None) -> Any:
        return self._registry.adapter.createProxy(Ice.Identity("server", "OMERO.Glacier2"))

    def addProxies(self, proxies: Any, current: Any = None) -> list[Any]:
        return []

    def getCategoryForClient(self, current: Any = None) -> str:
        return self._registry.client_category(current.con, lambda: str(uuidlib.uuid4()))

    def createSession(self, userId: str, password: str, current: Any = None) -> Any:
        registry = self._registry
        client_id = current.ctx.get(CLIENTUUID)
        if not client_id:
            raise _wrapped("omero.ApiUsageException", f"No {CLIENTUUID} key provided in context.")
        with registry.lock:
            if registry.bound(current.con) is not None:
                raise Glacier2.CannotCreateSessionException(reason="session exists")
            session = self._login(userId, password, current.ctx)
            factory = Factory(Ice.Identity(session.uuid, "session-" + client_id), session.uuid, client_id)
            proxy = registry.add_factory(factory, ServiceFactoryI(registry, factory))
            registry.bind(current.con, factory)
        current.con.setCallback(_ConnectionWatch(registry))
        return Glacier2.SessionPrx.uncheckedCast(proxy)

    def destroySession(self, current: Any = None) -> None:
        bound = self._registry.unbind(current.con)
        if bound is None:
            raise _session_not_exist()
        self._registry.destroy_factory(bound.factory)

    def _login(self, name: str, password: str, ctx: dict[str, str]) -> Session:
        table, directory = self._registry.table, self._registry.directory
        # blitz's PermissionsVerifierI: a live session UUID as password (or name) joins that
        # session, but only when name and password are both that UUID.
        for candidate in (password, name):
            try:
                table.lookup(candidate, touch=False)
            except SessionGone:
                continue
            if name != password:
                raise Glacier2.PermissionDeniedException(reason="username and password must be equal; use joinSession")
            return table.join(name)
        user = directory.authenticate(name, password)
        if user is None:
            raise Glacier2.PermissionDeniedException(reason=f"Password check failed for '{name}'")
        group_name = ctx.get("omero.group", "")
        group_id = user.default_group_id
        if group_name and group_name != "user":
            group = directory.group_named(group_name)
            if group is None:
                raise _wrapped("ome.conditions.ApiUsageException", f"No such group: {group_name}")
            # Not checked here: as in OMERO, the session's first call is refused instead.
            group_id = group.id
        return table.create(user, group_id, agent=ctx.get("omero.agent", ""), ip=ctx.get("omero.ip", ""))


class _ConnectionWatch(Ice.ConnectionCallback):  # type: ignore[misc]
    """Glacier2 destroys a client's session when its connection goes away."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def heartbeat(self, con: Any) -> None:
        pass

    def closed(self, con: Any) -> None:
        bound = self._registry.unbind(con)
        self._registry.forget_connection(con)
        if bound is not None:
            self._registry.destroy_factory(bound.factory)


@amd
class ServiceFactoryI(_SessionBound, omero.api.ServiceFactory):  # type: ignore[misc]
    """One client's ServiceFactory: hands out stateless services and keeps the session alive."""

    def getAdminService(self, current: Any = None) -> Any:
        return omero.api.IAdminPrx.uncheckedCast(self._service("ADMINSERVICE", current, True))

    def getConfigService(self, current: Any = None) -> Any:
        return omero.api.IConfigPrx.uncheckedCast(self._service("CONFIGSERVICE", current, True))

    def getSessionService(self, current: Any = None) -> Any:
        prx = self._service("SESSIONSERVICE", current, True)
        return omero.api.ISessionPrx.uncheckedCast(prx)

    def getQueryService(self, current: Any = None) -> Any:
        return omero.api.IQueryPrx.uncheckedCast(self._service("QUERYSERVICE", current, False))

    def getTypesService(self, current: Any = None) -> Any:
        return omero.api.ITypesPrx.uncheckedCast(self._service("TYPESSERVICE", current, False))

    def getByName(self, name: str, current: Any = None) -> Any:
        # An id from activeServices() comes back first; otherwise a service's blank name.
        for blank, identity in self._services().items():
            if name in (identity.name, blank):
                self._session(current)
                prx = self._registry.adapter.createProxy(identity)
                return omero.api.ServiceInterfacePrx.uncheckedCast(prx)
        for constant, (_, allow_guest) in _SERVICES.items():
            if getattr(omero.constants, constant) == name:
                prx = self._service(constant, current, allow_guest)
                return omero.api.ServiceInterfacePrx.uncheckedCast(prx)
        raise omero.ApiUsageException(message=f"{name} is not modelled by the stand-in")

    def activeServices(self, current: Any = None) -> list[str]:
        self._session(current)
        return [identity.name for identity in self._services().values()]

    def setCallback(self, callback: Any, current: Any = None) -> None:
        self._session(current)
        self._factory.callback = callback  # stored only: blitz has not called back since 4.x

    def closeOnDestroy(self, current: Any = None) -> None:
        self._session(current)
        self._factory.close_on_destroy = True

    def detachOnDestroy(self, current: Any = None) -> None:
        self._session(current)
        self._factory.close_on_destroy = False

    def keepAlive(self, proxy: Any, current: Any = None) -> bool:
        self._session(current)
        return proxy is not None and self._owns(proxy)

    def keepAllAlive(self, proxies: Any, current: Any = None) -> int:
        self._session(current)
        if not proxies:
            return -1
        missing = 0
        for index, proxy in enumerate(proxies):
            if proxy is not None and not self._owns(proxy):
                missing |= 1 << index
        return missing

    def getSecurityContexts(self, current: Any = None) -> list[Any]:
        user = self._session(current).user
        gids = dict.fromkeys(user.group_ids + user.leader_of)
        return [objects.group_object(self._directory.groups[g]) for g in gids]

    def setSecurityContext(self, obj: Any, current: Any = None) -> Any:
        session = self._session(current)
        if not isinstance(obj, omero.model.ExperimenterGroup) or obj.getId() is None:
            raise omero.ApiUsageException(message="Only groups are modelled as contexts")
        gid = unwrap(obj.getId())
        if gid not in self._directory.groups:
            raise omero.ApiUsageException(message=f"No such group: {gid}")
        if gid not in session.user.group_ids and not session.user.is_admin:
            raise omero.SecurityViolation(message=f"Not a member of group {gid}")
        with self._registry.lock:
            previous, session.group_id = session.group_id, gid
        return omero.model.ExperimenterGroupI(previous, False)

    def submit(self, req: Any, current: Any = None) -> Any:
        """blitz runs a command (omero.cmd) and hands out its Handle; the stand-in runs the few it
        models at once, so the handle is already finished when the client first polls it."""
        session = self._session(current)
        run = _COMMANDS.get(type(req).__name__)
        if run is None:
            raise omero.ApiUsageException(message=f"command not modelled: {type(req).__name__}")
        response = run(self._registry, session, req)
        with self._registry.lock:
            identity = Ice.Identity(str(uuidlib.uuid4()), session.uuid)
            self._factory.services[identity.name] = identity  # blitz lists handles as active services
            prx = self._registry.add(identity, HandleI(self._registry, self._factory, identity, response))
        return omero.cmd.HandlePrx.uncheckedCast(prx)

    def destroy(self, current: Any = None) -> None:
        self._registry.destroy_factory(self._factory)

    def _owns(self, proxy: Any) -> bool:
        wanted = proxy.ice_getIdentity()
        return any(wanted == identity for identity in self._services().values())

    def _services(self) -> dict[str, Any]:
        # A snapshot: another client's kill may reap this factory's services meanwhile.
        with self._registry.lock:
            return dict(self._factory.services)

    def _service(self, constant: str, current: Any, allow_guest: bool) -> Any:
        session = self._session(current)
        blank = getattr(omero.constants, constant)
        if session.user.is_guest and not allow_guest:
            raise omero.SecurityViolation(message=f"Access denied to guest user: {blank}")
        with self._registry.lock:
            identity = self._factory.services.get(blank)
            if identity is None:
                # blitz names stateless services "<client uuid><service>" in the session category
                identity = Ice.Identity(self._factory.client_id + blank, session.uuid)
                servant = _SERVICES[constant][0](self._registry, self._factory)
                self._factory.services[blank] = identity
                return self._registry.add(identity, servant)
        return self._registry.adapter.createProxy(identity)


@amd
class SessionServiceI(_SessionBound, omero.api.ISession):  # type: ignore[misc]
    def getSession(self, sessionUuid: str, current: Any = None) -> Any:
        self._enter(current)
        return objects.session_object(self._other(sessionUuid), self._directory)

    def getReferenceCount(self, sessionUuid: str, current: Any = None) -> int:
        self._enter(current)
        return self._other(sessionUuid).refcount

    def closeSession(self, sess: Any, current: Any = None) -> int:
        self._enter(current)
        return self._registry.table.close(unwrap(sess.getUuid()))

    def createSessionWithTimeout(self, principal: Any, ttl: int, current: Any = None) -> Any:
        return self._sudo(principal, ttl, 0, current)

    def createSessionWithTimeouts(self, principal: Any, ttl: int, tti: int, current: Any = None) -> Any:
        return self._sudo(principal, ttl, tti, current)

    def _other(self, uuid: str) -> Session:
        # Looking at a session by UUID does not count as using it.
        try:
            return self._registry.table.lookup(uuid, touch=False)
        except SessionExpired:
            raise omero.SessionTimeoutException(message=f"Session timed out: {uuid}") from None
        except SessionGone:
            raise omero.RemovedSessionException(message=f"No session: {uuid}") from None

    def _sudo(self, principal: Any, ttl: int, tti: int, current: Any) -> Any:
        caller, _ = self._enter(current)
        if not caller.user.is_admin or "Sudo" not in objects.privileges_of(caller.user):
            raise omero.SecurityViolation(message="Sudo requires an administrator")
        user = self._directory.user_named(principal.name)
        if user is None:
            raise omero.ApiUsageException(message=f"No such user: {principal.name}")
        group_id = user.default_group_id
        if principal.group and principal.group != "user":
            group = self._directory.group_named(principal.group)
            if group is None:
                raise omero.ApiUsageException(message=f"No such group: {principal.group}")
            group_id = group.id
        table = self._registry.table
        session = table.create(
            user,
            group_id,
            agent=caller.agent,
            sudoer=caller.user,
            time_to_idle_ms=tti,
            time_to_live_ms=ttl if ttl > 0 else table.default_time_to_live_ms,
        )
        return objects.session_object(session, self._directory)


@amd
class AdminServiceI(_SessionBound, omero.api.IAdmin):  # type: ignore[misc]
    def getEventContext(self, current: Any = None) -> Any:
        session, gid = self._enter(current)
        return objects.event_context(session, self._directory, gid)

    def getCurrentAdminPrivileges(self, current: Any = None) -> list[Any]:
        session, _ = self._enter(current)
        wanted = objects.privileges_of(session.user)
        return [p for p in objects.admin_privilege_objects() if unwrap(p.getValue()) in wanted]

    def getAdminPrivileges(self, user: Any, current: Any = None) -> list[Any]:
        self._enter(current)
        wanted = objects.privileges_of(self._user(unwrap(user.getId())))
        return [p for p in objects.admin_privilege_objects() if unwrap(p.getValue()) in wanted]

    def getSecurityRoles(self, current: Any = None) -> Any:
        self._enter(current)
        return objects.security_roles()

    def getExperimenter(self, id: int, current: Any = None) -> Any:
        self._enter(current)
        return objects.experimenter_object(self._user(id), self._directory, with_groups=True)

    def lookupExperimenter(self, name: str, current: Any = None) -> Any:
        self._enter(current)
        user = self._directory.user_named(name)
        if user is None:
            raise omero.ApiUsageException(message=f"No such experimenter: {name}")
        return objects.experimenter_object(user, self._directory, with_groups=True)

    def getGroup(self, id: int, current: Any = None) -> Any:
        self._enter(current)
        if id not in self._directory.groups:
            raise omero.ApiUsageException(message=f"No such group: {id}")
        return objects.group_object(self._directory.groups[id], self._directory)

    def lookupGroup(self, name: str, current: Any = None) -> Any:
        self._enter(current)
        group = self._directory.group_named(name)
        if group is None:
            raise omero.ApiUsageException(message=f"No such group: {name}")
        return objects.group_object(group, self._directory)

    def containedGroups(self, experimenterId: int, current: Any = None) -> list[Any]:
        self._enter(current)
        user = self._user(experimenterId)
        return [objects.group_object(self._directory.groups[g]) for g in user.group_ids]

    def getDefaultGroup(self, experimenterId: int, current: Any = None) -> Any:
        self._enter(current)
        user = self._user(experimenterId)
        return objects.group_object(self._directory.groups[user.default_group_id])

    def getMemberOfGroupIds(self, experimenter: Any, current: Any = None) -> list[int]:
        self._enter(current)
        return list(self._user(unwrap(experimenter.getId())).group_ids)

    def getLeaderOfGroupIds(self, experimenter: Any, current: Any = None) -> list[int]:
        self._enter(current)
        return list(self._user(unwrap(experimenter.getId())).leader_of)

    def _user(self, user_id: int) -> User:
        user = self._directory.users.get(user_id)
        if user is None:
            raise omero.ApiUsageException(message=f"No such experimenter: {user_id}")
        return user


@amd
class QueryServiceI(_SessionBound, omero.api.IQuery):  # type: ignore[misc]
    def findByQuery(self, query: str, params: Any, current: Any = None) -> Any:
        rows = self._run(query, params, current)
        if len(rows) > 1:
            raise omero.ApiUsageException(message="query returned more than one row")
        return rows[0] if rows else None

    def findAllByQuery(self, query: str, params: Any, current: Any = None) -> list[Any]:
        return self._run(query, params, current)

    def _run(self, query: str, params: Any, current: Any) -> list[Any]:
        self._enter(current)
        try:
            return run_query(self._directory, query, bound_parameters(params))
        except UnsupportedQuery as exc:
            raise omero.ApiUsageException(message=f"query not modelled by the stand-in: {exc}") from None


@amd
class ConfigServiceI(_SessionBound, omero.api.IConfig):  # type: ignore[misc]
    def getConfigValue(self, key: str, current: Any = None) -> str:
        self._enter(current)
        return self._registry.config.get(key, "")

    def getClientConfigValues(self, current: Any = None) -> dict[str, str]:
        self._enter(current)
        return {k: v for k, v in self._registry.config.items() if k.startswith("omero.client.")}

    def getVersion(self, current: Any = None) -> str:
        self._enter(current)
        return self._registry.config.get("omero.version", "5.6.0-standin")


@amd
class TypesServiceI(_SessionBound, omero.api.ITypes):  # type: ignore[misc]
    def allEnumerations(self, enumClass: str, current: Any = None) -> list[Any]:
        self._enter(current)
        if enumClass.rsplit(".", 1)[-1] != "AdminPrivilege":
            raise omero.ApiUsageException(message=f"enumeration not modelled: {enumClass}")
        return objects.admin_privilege_objects()


class HandleI(_SessionBound, omero.cmd.Handle):  # type: ignore[misc]
    """A finished command: its response (OK or ERR) and status, until the client closes it."""

    def __init__(self, registry: Registry, factory: Factory, identity: Any, response: Any) -> None:
        super().__init__(registry, factory)
        self._identity = identity
        self._response = response
        failed = isinstance(response, omero.cmd.ERR)
        source = omero.cmd.HandlePrx.uncheckedCast(registry.adapter.createProxy(identity))
        self._status = omero.cmd.Status(
            source=source, category="", name="", flags=[omero.cmd.State.FAILURE] if failed else [],
            parameters={}, currentStep=1, steps=1, startTime=0, stepStartTimes=[0], stepStopTimes=[0],
            stopTime=0)

    def addCallback(self, cb: Any, current: Any = None) -> None:
        self._session(current)  # stored nowhere: the client polls a finished handle at once

    def removeCallback(self, cb: Any, current: Any = None) -> None:
        self._session(current)

    def getRequest(self, current: Any = None) -> Any:
        raise omero.ApiUsageException(message="the stand-in keeps no request")

    def getResponse(self, current: Any = None) -> Any:
        self._session(current)
        return self._response

    def getStatus(self, current: Any = None) -> Any:
        self._session(current)
        return self._status

    def cancel(self, current: Any = None) -> bool:
        return False  # finished already

    def close(self, current: Any = None) -> None:
        with self._registry.lock:
            self._factory.services.pop(self._identity.name, None)
            self._registry.remove(self._identity)


def _update_session_timeout(registry: Registry, caller: Session, req: Any) -> Any:
    """blitz's UpdateSessionTimeoutRequest: a user changes his own session's timeouts, within
    omero.sessions.max_user_time_to_idle / _to_live (0: no limit); an admin any session's."""
    def err(name: str, **parameters: str) -> Any:
        return omero.cmd.ERR(category=type(req).__name__, name=name, parameters=parameters)

    try:
        target = registry.table.lookup(req.session, touch=False)
    except SessionGone:
        return err("no-session", session=req.session)
    admin = caller.user.is_admin
    if not admin and target.user.id != caller.user.id:
        return err("non-owner", session=req.session)
    changes = {}
    for name, field, limit in (("timeToIdle", "time_to_idle_ms", "omero.sessions.max_user_time_to_idle"),
                               ("timeToLive", "time_to_live_ms", "omero.sessions.max_user_time_to_live")):
        value = unwrap(getattr(req, name))
        if value is None:
            continue
        maximum = int(registry.config.get(limit, "0"))
        if value < 0 or (not admin and maximum and (value == 0 or value > maximum)):
            return err("cannot-set", **{name: str(value), "maximum": str(maximum)})
        changes[field] = value
    with registry.lock:
        for field, value in changes.items():
            setattr(target, field, value)
    return omero.cmd.OK()


_COMMANDS = {"UpdateSessionTimeoutRequest": _update_session_timeout}

# Service constant -> (servant class, reachable by the guest user), as blitz's getByName.
_SERVICES: dict[str, tuple[type[_SessionBound], bool]] = {
    "ADMINSERVICE": (AdminServiceI, True),
    "CONFIGSERVICE": (ConfigServiceI, True),
    "SESSIONSERVICE": (SessionServiceI, True),
    "QUERYSERVICE": (QueryServiceI, False),
    "TYPESSERVICE": (TypesServiceI, False),
}

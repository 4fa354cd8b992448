"""Names for rules, composites and methods, registered next to what they name.

The command line, the benchmarks and ``verify`` find a rule, a composite or an explanation
method by a short name (``"epsilon"``, ``"epsilon_plus"``, ``"gradient"``); code passes the
objects themselves.  Each name is given where its class or function is defined::

    @composites.register("my_composite")
    class MyComposite(Composite):
        ...

so that a new one (in the package or outside it) is one definition, not a definition plus an
entry in a table kept by hand in another file.
"""

from .errors import RuleParameterError


class Registry(dict):
    """A dict of name -> class or function, with :meth:`register` usable as a decorator.

    Parameters
    ----------
    what : str
        What the names stand for ("rule", "composite", "method"), for messages.
    """

    def __init__(self, what):
        super().__init__()
        self.what = what

    def register(self, name, obj=None):
        """Register ``obj`` under ``name`` and return it; without ``obj``, a decorator that does.

        ``register("name", cls)`` and ``@register("name")`` above a class or function are the same.
        Registering a taken name replaces the entry (as assigning to a dict does).
        """
        if not isinstance(name, str) or not name:
            raise RuleParameterError(f"a {self.what} name must be a non-empty string, got {name!r}")
        if obj is None:
            def decorate(target):
                self[name] = target
                return target
            return decorate
        self[name] = obj
        return obj

    def lookup(self, name):
        """The entry registered as ``name``; RuleParameterError listing the known names otherwise."""
        try:
            return self[name]
        except (KeyError, TypeError):
            raise RuleParameterError(f"unknown {self.what} {name!r}; known: {', '.join(sorted(self))}") from None


#: Explanation methods by name, ``method(model, x, target=None, **kwargs) -> Explanation``
#: (:data:`lrpnumpy.methods.REGISTRY` is this registry; rules and composites keep theirs in
#: their own modules).  A method is named with ``@register_method("name")`` where it is defined.
METHODS = Registry("method")
register_method = METHODS.register

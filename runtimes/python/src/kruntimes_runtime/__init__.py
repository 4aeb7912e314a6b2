"""kruntimes python Runtime Server: serves the Runtime Server protocol with a warm
zygote interpreter that forks one child per execution."""

__version__ = "0.1.0"

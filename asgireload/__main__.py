try:
    from ._command import main
except KeyboardInterrupt:  # CTRL+C before anything started: a stop, not a traceback
    raise SystemExit(130) from None

main()

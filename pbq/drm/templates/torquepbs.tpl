#!/bin/sh
${directives}
# Torque/PBS job script written by pbq.
${body}
